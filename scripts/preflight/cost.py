"""What each phase of one preflight cost: its wall time and the launcher's CPU time.

The launcher's CPU is what this machine spends on the hosts: this process, the programs it
started (ssh clients, mpirun) and the ssh masters it left running in the background (they
leave the process tree, so they are found by their control socket's directory). On a real
cluster that is the part that grows with the number of hosts on one machine; the hosts' own
work runs on the hosts. The README's cost model (At scale) is built from these figures.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

try:  # the launcher's venv has it; without it only this process and reaped children count
    import psutil
except ImportError:  # pragma: no cover
    psutil = None


class Phases:
    """Wall and launcher CPU seconds per named phase, in the order they ran."""

    def __init__(self, marker: str | None = None) -> None:
        self.marker = marker  # a path in the command line of our ssh masters
        self.rows: dict[str, dict[str, float]] = {}
        # CPU seconds already put on a phase (or spent before the first), per pid
        self._counted: dict[int, float] = live_cpu_s(None)
        self._reaped = reaped_cpu_s()

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Times the block; the launcher's CPU since the last phase ended goes to this one
        (one look at the process table a phase: it costs milliseconds)."""
        started = time.monotonic()
        try:
            yield
        finally:
            self.add(name, time.monotonic() - started, self.cpu_since_last())

    def add(self, name: str, wall_s: float, cpu_s: float) -> None:
        row = self.rows.setdefault(name, {"wall_s": 0.0, "launcher_cpu_s": 0.0})
        row["wall_s"] = round(row["wall_s"] + wall_s, 3)
        row["launcher_cpu_s"] = round(row["launcher_cpu_s"] + cpu_s, 3)

    def cpu_since_last(self) -> float:
        """Launcher CPU seconds since the last call: each process's growth, counted once (a
        child reaped since then brings its whole time into os.times(), less what was counted
        while it ran)."""
        now = live_cpu_s(self.marker)
        grown = sum(max(0.0, s - self._counted.get(p, 0.0)) for p, s in now.items())
        gone = sum(s for p, s in self._counted.items() if p not in now)
        reaped = reaped_cpu_s()
        grown += max(0.0, reaped - self._reaped - gone)
        self._reaped, self._counted = reaped, now
        return grown

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {name: dict(row) for name, row in self.rows.items()}


def reaped_cpu_s() -> float:
    times = os.times()
    return times.children_user + times.children_system


def live_cpu_s(marker: str | None) -> dict[int, float]:
    """CPU seconds per pid: this process, its descendants, and processes whose command line
    holds the marker (our ssh masters)."""
    if psutil is None:
        times = os.times()
        return {os.getpid(): times.user + times.system}
    me = psutil.Process()
    found = [me, *me.children(recursive=True)]
    if marker:
        found += [p for p in psutil.process_iter(["cmdline"])
                  if marker in " ".join(p.info["cmdline"] or ())]
    seconds: dict[int, float] = {}
    for process in found:
        try:
            cpu = process.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seconds[process.pid] = cpu.user + cpu.system
    return seconds
