"""Running commands on hosts through the system's OpenSSH client.

The system client is used on purpose: the user's ~/.ssh/config (keys, ports, jump hosts) applies
exactly as it will for mpirun. Batch mode means a missing key fails at once instead of waiting at
a password prompt. Host-key checking is left as the user configured it. Arguments travel as one
shell-quoted string because ssh hands the remote command to the login shell.
"""

from __future__ import annotations

import shlex
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from . import proc

T = TypeVar("T")
R = TypeVar("R")

CONNECT_TIMEOUT_S = 5
LOCAL_NAMES = {"localhost", "127.0.0.1", "::1"}


def is_local(host: str) -> bool:
    """True for names of the machine we run on: no ssh is needed to reach it."""
    return host in LOCAL_NAMES or host in (socket.gethostname(), socket.getfqdn())


class Ssh:
    """An ssh runner that shares one connection per host across the preflight's steps."""

    def __init__(self, connect_timeout_s: int = CONNECT_TIMEOUT_S) -> None:
        self.connect_timeout_s = connect_timeout_s
        # Short path: a unix socket path must stay under ~100 bytes.
        self._control_dir = tempfile.mkdtemp(prefix="pf-ssh-")
        self._hosts_used: set[str] = set()

    def argv(self, host: str, remote_argv: Sequence[str]) -> list[str]:
        return [
            "ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2",
            # Multiplexing: the probe, the mesh test and the rest reuse one TCP+auth handshake.
            "-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_dir}/%C",
            "-o", "ControlPersist=60",
            "--", host, shlex.join(remote_argv),
        ]

    def reuse_args(self) -> list[str]:
        """ssh options for another program's ssh (mpirun's) to ride on these connections where
        they are open, and connect as usual where not: no second handshake per host. None
        where the path has a space: mpirun splits its ssh options at spaces."""
        if any(c.isspace() for c in self._control_dir):
            return []
        return ["-o", "ControlMaster=no", "-o", f"ControlPath={self._control_dir}/%C"]

    def run(self, host: str, remote_argv: Sequence[str], *, stdin: str | None = None,
            timeout_s: float = 30) -> proc.Ran:
        """Runs argv on host (directly if the host is this machine); never raises on failure.
        ssh exits 255 when ssh itself, not the remote command, failed."""
        return proc.run(self._argv_for(host, remote_argv), timeout_s, stdin=stdin)

    def popen(self, host: str, remote_argv: Sequence[str]) -> subprocess.Popen:
        """A long-running remote process with pipes, for steps that talk back and forth."""
        return subprocess.Popen(self._argv_for(host, remote_argv), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                bufsize=1)

    def _argv_for(self, host: str, remote_argv: Sequence[str]) -> list[str]:
        if is_local(host):
            return list(remote_argv)
        self._hosts_used.add(host)
        return self.argv(host, remote_argv)

    def close(self) -> None:
        """Ends the shared connections and removes their sockets."""
        for host in self._hosts_used:
            proc.run(["ssh", "-o", f"ControlPath={self._control_dir}/%C", "-O", "exit", "--",
                      host], timeout_s=5)
        # A master removes its own socket as it exits, which may be while we list them.
        shutil.rmtree(self._control_dir, ignore_errors=True)

    def __enter__(self) -> Ssh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fan_out(items: Iterable[T], fn: Callable[[T], R], max_workers: int = 32) -> list[R]:
    """fn over items concurrently, results in the order of items."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(fn, items))
