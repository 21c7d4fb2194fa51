"""The one way this project runs a local process: bounded in time, in its own process group, and
described afterwards by one result type (`Ran`).

Every process starts in a new session, so that stopping it stops what it started too: mpirun
and horovodrun leave daemons and ranks behind when only the parent is killed. `stop_group`
sends TERM first (mpirun then takes its remote daemons down) and KILL to what is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

KILL_GRACE_S = 3.0
HOPELESS_GRACE_S = 2.0  # a run judged hopeless may still recover: give it a moment
WATCH_S = 0.1


@dataclass(frozen=True)
class Ran:
    """What came back from one process: exit status, output, time, and whether we stopped it
    (at the time limit, or as soon as its output showed it could only hang)."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    stopped: str | None = None  # None: it ended by itself; "timeout" or "hopeless": we stopped it
    limit_s: float = 0.0  # the time limit, where that is why it was stopped

    @property
    def timed_out(self) -> bool:
        return self.stopped is not None

    @property
    def gave_up(self) -> bool:
        return self.stopped == "hopeless"

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def why(self) -> str:
        """A short account of a failure: the command, how it ended, the last lines it printed."""
        tail = (self.stderr.strip() or self.stdout.strip()).splitlines()[-6:]
        state = "timed out" if self.timed_out else f"exit {self.returncode}"
        return f"{' '.join(self.argv[:8])} ... {state}:\n  " + "\n  ".join(tail)


def keras_2(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """TF_USE_LEGACY_KERAS=1 in env where tf_keras is installed (the default stack: TensorFlow
    2.21, where tf.keras is then Keras 2, which Horovod 0.28.1's Keras layer needs). Not on the
    old stack (TF=2.15): there the variable would send tf.keras to a tf_keras it does not have.
    TensorFlow reads it when it is imported. train.py and the --deep agent, which stand alone,
    do the same."""
    if importlib.util.find_spec("tf_keras") is not None:
        env.setdefault("TF_USE_LEGACY_KERAS", "1")
    return env


def job_env(extra: Mapping[str, str] | None = None, base: Mapping[str, str] | None = None,
            root: bool | None = None) -> dict[str, str]:
    """base (this environment by default) plus what an MPI or Horovod job needs: Keras 2 from
    tf_keras (keras_2: read when TensorFlow is imported, in every rank), Open MPI
    allowed to run as root (the simulated cluster and CI run as root), and TensorFlow's start-up
    notes, printed once per rank, kept quiet."""
    env = keras_2(dict(os.environ if base is None else base))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if (os.geteuid() == 0) if root is None else root:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env.update(extra or {})
    return env


def run(argv: Sequence[str], timeout_s: float, *, stdin: str | None = None,
        env: Mapping[str, str] | None = None, cwd: Path | str | None = None,
        hopeless: Callable[[str], bool] | None = None, grace_s: float = KILL_GRACE_S) -> Ran:
    """Runs argv to its end or to timeout_s, whichever comes first; never raises for a failing
    command (a missing program is returncode 127). hopeless(stdout so far): when it has held for
    HOPELESS_GRACE_S the process group is stopped early. grace_s: between TERM and KILL when
    it is stopped."""
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=None if env is None else dict(env), cwd=cwd, start_new_session=True)
    except OSError as exc:
        return Ran(tuple(argv), 127, "", str(exc), time.monotonic() - start)
    if hopeless is None:  # the common case: the pipes are read as they fill, no polling
        try:
            out, err = proc.communicate(stdin, timeout=timeout_s)
            stopped = None
        except subprocess.TimeoutExpired:
            stop_group(proc, grace_s)
            out, err = proc.communicate()
            stopped = "timeout"
        return _ran(argv, proc, out, err, start, stopped, timeout_s)
    chunks: tuple[list[str], list[str]] = ([], [])
    threads = [threading.Thread(target=_collect, args=(pipe, into), daemon=True)
               for pipe, into in zip((proc.stdout, proc.stderr), chunks)]
    for thread in threads:
        thread.start()
    if stdin is not None:
        _feed(proc, stdin)
    stopped = _watch(proc, start + timeout_s, lambda: hopeless("".join(chunks[0])), grace_s)
    until = time.monotonic() + KILL_GRACE_S
    for thread in threads:
        thread.join(timeout=max(0.0, until - time.monotonic()))
    return _ran(argv, proc, "".join(chunks[0]), "".join(chunks[1]), start, stopped, timeout_s)


def _ran(argv: Sequence[str], proc: subprocess.Popen, out: str, err: str, start: float,
         stopped: str | None, timeout_s: float) -> Ran:
    return Ran(tuple(argv), proc.returncode, out or "", err or "", time.monotonic() - start,
               stopped, limit_s=timeout_s if stopped == "timeout" else 0.0)


def _feed(proc: subprocess.Popen, text: str) -> None:
    try:
        proc.stdin.write(text)
        proc.stdin.close()
    except (BrokenPipeError, OSError):  # it ended without reading: its output says why
        pass


def _collect(pipe, into: list[str]) -> None:
    for line in pipe:
        into.append(line)


def _watch(proc: subprocess.Popen, deadline: float, hopeless: Callable[[], bool],
           grace_s: float = KILL_GRACE_S) -> str | None:
    """Waits for the process; None when it ended, else why it was stopped."""
    hopeless_since = None
    while True:
        try:
            proc.wait(timeout=WATCH_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if now >= deadline:
            stop_group(proc, grace_s)
            return "timeout"
        if not hopeless():
            hopeless_since = None
        elif hopeless_since is None:
            hopeless_since = now
        elif now - hopeless_since > HOPELESS_GRACE_S:
            stop_group(proc, grace_s)
            return "hopeless"


def stop_group(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """TERM the process's group, then KILL what is left after a grace period; then KILL its
    descendants that left the group (mpirun starts its ssh clients in groups of their own):
    they would hold its output open, and their remote daemons alive."""
    strays = descendants(proc.pid)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=grace_s)
            break
        except subprocess.TimeoutExpired:
            continue
    for stray in strays:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(stray, signal.SIGKILL)


def descendants(pid: int) -> list[int]:
    """The processes below pid, and those of its session (pid leads the session that run()
    starts it in): a child that daemonised itself away from pid is still in the session.
    Read from /proc (psutil is not everywhere this runs)."""
    children: dict[int, list[int]] = {}
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent, session = int(fields[1]), int(fields[3])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
        if session == pid and int(entry.name) != pid:
            found.add(int(entry.name))
    todo = list(children.get(pid, ()))
    while todo:
        child = todo.pop()
        found.add(child)
        todo += children.get(child, ())
    return sorted(found)


# Open files the launcher holds per host at once: a probe's ssh session (3 pipes, then parked
# for the mesh agent), mpirun's ssh client and its daemon's connection; and a margin for the
# rest (Python, the report, the ssh master's socket directory).
FILES_PER_HOST = 8
FILES_MARGIN = 256


def raise_open_files(hosts: int) -> int:
    """Raises this process's soft limit on open files to its hard limit (children, mpirun
    among them, inherit it) and returns the new soft limit. Where even the hard limit is too
    low for `hosts`, a UserError that names `ulimit -n`: nothing has been started yet."""
    need = FILES_MARGIN + FILES_PER_HOST * hosts
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < need:
        raise UserError(f"{hosts} hosts need about {need} open files here, and the hard limit "
                        f"is {hard} (ulimit -Hn)",
                        f"raise it where you log in: ulimit -n {need} as root, or "
                        f"'* hard nofile {need}' in /etc/security/limits.conf, then log in again")
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, need)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft
