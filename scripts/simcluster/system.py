"""The system tools the cluster is made with (ip, iptables, tc, sshd, ssh-keygen), processes
found through pidfiles, and locks. Every tool runs with an argument list, never through a shell."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from preflight.errors import Exit, UserError

from .settings import PROG

# ip, sshd and iptables live in sbin, which a minimal or non-login PATH may lack.
SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def with_sbin(path: str | None) -> str:
    """PATH with the sbin directories appended where missing."""
    parts = [p for p in (path or os.defpath).split(os.pathsep) if p]
    return os.pathsep.join(parts + [d for d in SBIN if d not in parts])


@functools.cache
def tool(name: str) -> str:
    """The absolute path of a tool, so a command's own PATH never decides which one runs."""
    found = shutil.which(name, path=with_sbin(os.environ.get("PATH")))
    if not found:
        raise UserError(f"{name} is not installed", "run: scripts/setup.sh", Exit.FAILED)
    return found


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Runs a tool (no stdin, output captured); with check, a failure is a UserError naming
    the command and its last line of complaint."""
    proc = subprocess.run([tool(argv[0]), *argv[1:]], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        lines = (proc.stderr.strip() or proc.stdout.strip()).splitlines()
        raise UserError(f"{' '.join(argv)} failed (exit {proc.returncode})"
                        + (f": {lines[-1]}" if lines else ""), code=Exit.FAILED)
    return proc


def ok(*argv: str) -> bool:
    """Whether a tool succeeds; its output is thrown away."""
    return run(*argv, check=False).returncode == 0


def retry(tries: int, delay: float, attempt: Callable[[], object]) -> bool:
    """Calls attempt up to `tries` times, `delay` seconds apart, until it returns something true."""
    for i in range(tries):
        if attempt():
            return True
        if i < tries - 1:
            time.sleep(delay)
    return False


def warn(message: str) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def need_root() -> None:
    if os.geteuid() != 0:
        raise UserError("needs root (network namespaces)",
                        "run it as root, e.g.: sudo make cluster-up N=3", Exit.FAILED)


# --- processes -----------------------------------------------------------------------------------

def read_pid(pidfile: Path) -> int | None:
    try:
        digits = "".join(c for c in pidfile.read_text() if c.isdigit())
    except OSError:
        return None
    return int(digits) if digits else None


def _proc_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat (after the command name, which may hold spaces)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rfind(")") + 2:][:1] or None


def pid_gone(pid: int) -> bool:
    """Exited: no such process, or a zombie waiting to be reaped."""
    return _proc_state(pid) in (None, "Z")


def pid_is_ours(pid: int | None, needle: str) -> bool:
    """Whether a pid from a pidfile is alive and its command line mentions `needle`: guards
    against pid reuse after a crash."""
    if pid is None or pid_gone(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return needle.encode() in cmdline


def stop_pids(pids: Sequence[int]) -> None:
    """TERM, then KILL whatever is still there after about 2 s."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    for pid in pids:
        if not retry(20, 0.1, lambda pid=pid: pid_gone(pid)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


# --- locks ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def locked(path: Path, timeout_s: float, busy: str) -> Iterator[None]:
    """Holds an flock on `path` (the same lock flock(1) takes, so older tools respect it).
    The descriptor is close-on-exec, so processes started meanwhile never keep it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise UserError(busy, f"{path} is still locked after {timeout_s:.0f} s",
                                    Exit.FAILED) from None
                time.sleep(0.1)
        yield
