"""Why a job failed, in one line, from what horovodrun printed: which process on which host
failed first and how, the last checkpoint, and the `make train RESUME=` that continues.

Open MPI (static runs) names the rank, `process rank R with PID P on node H exited on signal S`
or `Process name: [[J,1],R]` and `Exit code: C`; horovodrun's elastic driver (Gloo) names the
host and slot, `Process name: H[S]`, and times out with `... enough resources to run at least`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

KILLED_RE = re.compile(r"process rank (\d+) with PID \d+ on node (\S+) exited on signal (\d+)"
                       r"(?: \(([^)]+)\))?")
EXITED_RE = re.compile(r"Process name:\s*\[\[\d+,\d+\],(\d+)\]\s*Exit code:\s*(-?\d+)")
SLOT_RE = re.compile(r"^Process name: *([^\s\[]+)\[(\d+)\]", re.MULTILINE)
EXIT_CODE_RE = re.compile(r"^Exit code: *(-?\d+)", re.MULTILINE)
ELASTIC_TIMEOUT = "enough resources to run at least"  # horovodrun's HOROVOD_ELASTIC_TIMEOUT
RANK_ERROR_RE = re.compile(r"<std(?:out|err)>:error: (.*?)(?=\[\d+(?:,\d+)?\]<std|$)",
                           re.MULTILINE)  # the template's `error: WHAT; FIX`, tags cut off
RUN_DIR_RE = re.compile(r"run directory ([^\s\[]+)")  # mpirun may glue a "[1,0]<stdout>:" on


def failure(log: str, rank_hosts: Sequence[str] = (), elastic: bool = False,
            min_np: int = 1) -> str:
    """The one line for a failed job (without the 'make train: ' in front). rank_hosts: the
    host of each rank as mpirun placed them, for Open MPI's lines that name only the rank."""
    return what_failed(log, rank_hosts, min_np) + resume_hint(log, elastic)


def what_failed(log: str, rank_hosts: Sequence[str], min_np: int) -> str:
    if m := RANK_ERROR_RE.search(log):  # a rank said what is wrong and how to fix it
        return f"error: {m.group(1).strip()}"
    if ELASTIC_TIMEOUT in log:
        return (f"fewer than MIN_NP={min_np} slots passed the preflight within "
                "HOROVOD_ELASTIC_TIMEOUT (default 600 s): run make preflight to see why")
    if m := KILLED_RE.search(log):
        signal = f" ({m.group(4)})" if m.group(4) else ""
        return f"rank {m.group(1)} on {m.group(2)} was killed by signal {m.group(3)}{signal}"
    if m := EXITED_RE.search(log):
        rank = int(m.group(1))
        host = rank_hosts[rank] if rank < len(rank_hosts) else "?"
        return f"rank {rank} on {host} exited with code {m.group(2)}"
    if m := SLOT_RE.search(log):
        code = EXIT_CODE_RE.search(log)
        how = f"exited with code {code.group(1)}" if code else "failed"
        return f"the process in slot {m.group(2)} on {m.group(1)} {how}"
    return "the job failed before naming a process; see the output above"


def resume_hint(log: str, elastic: bool = False) -> str:
    """'; last checkpoint C; continue with: make train RESUME=R' when the run wrote one."""
    if not (run := RUN_DIR_RE.search(log)):
        return ""
    checkpoints = sorted(Path(run.group(1)).glob("checkpoints/epoch-*.keras"))
    if not checkpoints:
        return ""
    again = "make train ELASTIC=1" if elastic else "make train"
    return f"; last checkpoint {checkpoints[-1]}; continue with: {again} RESUME={run.group(1)}"
