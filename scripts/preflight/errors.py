"""The one table of exit codes, and the one error type for what a user must fix.

Every command of the project (preflight, make train, the elastic discovery, the simulated
cluster) exits with these codes and reports a `UserError` through `render`, as one line:
`PROG: error: WHAT; FIX`.
"""

from __future__ import annotations

import sys
from enum import IntEnum
from typing import TextIO


class Exit(IntEnum):
    OK = 0
    SOME_OUT = 1  # preflight: some hosts failed; the hostfile lists the healthy ones
    FAILED = 1  # a command that has no hosts to judge: it did not do its work
    BAD_INPUT = 2  # the input is wrong; nothing was started or written
    CRASHED = 3  # preflight: a bug; the traceback says where
    UNSUPPORTED = 3  # simulated cluster: this machine cannot make that fault


class UserError(Exception):
    """Something the user can fix: what is wrong, what to do, and the exit code it means."""

    def __init__(self, message: str, remedy: str = "", code: int = Exit.BAD_INPUT) -> None:
        super().__init__(message)
        self.message, self.remedy, self.code = message, remedy, int(code)

    def __str__(self) -> str:
        return f"{self.message}; {self.remedy}" if self.remedy else self.message


def render(prog: str, error: UserError, stream: TextIO | None = None) -> int:
    """Prints the error as one line and returns its exit code."""
    print(f"{prog}: error: {error}", file=stream or sys.stderr)
    return error.code
