"""Running commands on hosts through the system's OpenSSH client.

The system client is used on purpose: the user's ~/.ssh/config (keys, ports, jump hosts) applies
exactly as it will for mpirun. Batch mode means a missing key fails at once instead of waiting at
a password prompt. Host-key checking is left as the user configured it. Arguments travel as one
shell-quoted string because ssh hands the remote command to the login shell.
"""

from __future__ import annotations

import contextlib
import queue
import shlex
import shutil
import socket
import subprocess
import tempfile
import threading
import time
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
        self._parked: dict[str, Session] = {}

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

    @property
    def control_dir(self) -> str:
        """Where the ssh masters' sockets are: in the masters' command lines too."""
        return self._control_dir

    def session(self, host: str, remote_argv: Sequence[str]) -> Session:
        """A long-running remote process that steps talk to in lines; raises OSError when it
        cannot even be started (no ssh client)."""
        return Session(self._argv_for(host, remote_argv))

    def park(self, host: str, session: Session) -> None:
        """Keeps a live session on host for a later step (take); close() ends it if none does."""
        old = self._parked.pop(host, None)
        if old is not None:
            old.end()
        self._parked[host] = session

    def take(self, host: str) -> Session | None:
        """The session parked on host, if it is still running; it is the caller's from now."""
        session = self._parked.pop(host, None)
        if session is not None and not session.running:
            session.end()
            return None
        return session

    def release(self, keep: Iterable[str] = ()) -> None:
        """Ends the parked sessions of every host but `keep`: hosts no later step needs."""
        keep = set(keep)
        gone = [self._parked.pop(h) for h in list(self._parked) if h not in keep]
        fan_out(gone, lambda session: session.end())

    def _argv_for(self, host: str, remote_argv: Sequence[str]) -> list[str]:
        if is_local(host):
            return list(remote_argv)
        self._hosts_used.add(host)
        return self.argv(host, remote_argv)

    def close(self) -> None:
        """Ends the parked sessions and the shared connections, and removes their sockets: all
        at once, as one by one they cost a few tenths of a second over 16 hosts."""
        self.release()
        fan_out(sorted(self._hosts_used), lambda host: proc.run(
            ["ssh", "-o", f"ControlPath={self._control_dir}/%C", "-O", "exit", "--", host],
            timeout_s=5))
        # A master removes its own socket as it exits, which may be while we list them.
        shutil.rmtree(self._control_dir, ignore_errors=True)

    def __enter__(self) -> Ssh:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session:
    """A process (on a host through ssh, or on this machine) that steps talk to in lines: what
    it prints comes into a queue line by line, its stderr is kept, and it runs in its own
    process group so that stopping it stops what it started. One session can serve several
    steps in turn: the host probe's becomes the mesh agent's (agents/host_probe.py, --stay)."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = tuple(argv)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(list(argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        self.stderr: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._eof = False
        self._readers = [threading.Thread(target=self._read_stdout, daemon=True),
                         threading.Thread(target=self._read_stderr, daemon=True)]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None and not self._eof

    def read_line(self, deadline: float) -> str | None:
        """The next line it printed; None once its output has ended; TimeoutError when no line
        comes by the deadline (time.monotonic())."""
        if self._eof:
            return None
        try:
            line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise TimeoutError from None
        self._eof = line is None
        return line

    def send(self, text: str, end: str = "\n") -> bool:
        """Writes to its stdin; False where it is gone (its missing answer then says so)."""
        try:
            self.proc.stdin.write(text + end)
            self.proc.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def ran(self, stdout: str, stopped: str | None = None) -> proc.Ran:
        """A Ran for what it did so far: exit status 0 while it runs."""
        code = self.proc.returncode if self.proc.returncode is not None else 0
        return proc.Ran(self.argv, code, stdout, "".join(self.stderr),
                        time.monotonic() - self.started, stopped)

    def finish(self, read: str = "", wait_s: float = proc.KILL_GRACE_S) -> proc.Ran:
        """After its output ended: waits for it to exit, and says how it went (`read`: the
        output the caller has taken already)."""
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.stop_group(self.proc)
        self._join()
        return self.ran(read + self._drain())

    def stop(self, read: str = "") -> proc.Ran:
        """Stops it (it ran past its time), and says how far it got."""
        proc.stop_group(self.proc)
        self._join()
        return self.ran(read + self._drain(), stopped="timeout")

    def end(self, wait_s: float = 2.0) -> None:
        """Closes its stdin (a parked probe or an agent then exits), then waits a moment for
        it before stopping it."""
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            proc.stop_group(self.proc)
        self._join()

    def _join(self) -> None:
        for reader in self._readers:
            reader.join(timeout=proc.KILL_GRACE_S)
        with contextlib.suppress(OSError, ValueError):
            self.proc.stdin.close()

    def _drain(self) -> str:
        lines = []
        while not self._lines.empty():
            line = self._lines.get_nowait()
            if line is not None:
                lines.append(line)
        return "".join(lines)


def fan_out(items: Iterable[T], fn: Callable[[T], R], max_workers: int = 32) -> list[R]:
    """fn over items concurrently, results in the order of items."""
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(items))) as pool:
        return list(pool.map(fn, items))
