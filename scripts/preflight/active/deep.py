"""--deep: one real Horovod allreduce through horovodrun itself, on the hosts that passed.

The job's own launcher, the job's own imports (agents/horovod_probe.py imports Horovod's
TensorFlow layer on every host, as train.py does): what only a real start shows, such as a
Horovod built against another TensorFlow, fails here and not in the first minute of training.
It costs a TensorFlow import on every host (a few seconds of CPU each) and is opt-in. A group
that fails is narrowed to its culprits by halving, as the MPI check does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .. import agents, proc
from ..checks.mpi import HOROVOD, horovod_events, horovod_failed, horovod_ok, horovod_passed
from ..remote import is_local
from ..result import CheckResult, skipped
from .isolate import halve

MIN_RUN_S = 10.0  # a TensorFlow import and a Horovod start need at least this


@dataclass(frozen=True)
class DeepAttempt:
    hosts: tuple[str, ...]
    run: proc.Ran
    ok: bool


def run_deep(hosts: list[str], interfaces: str, python: str, gloo: bool, timeout_s: float
             ) -> dict[str, list[CheckResult]]:
    """mpi.horovod for each host. interfaces: horovodrun's --network-interfaces value."""
    if not hosts:
        return {}
    horovodrun = Path(python).parent / "horovodrun"
    if not horovodrun.exists():
        return {h: [skipped(HOROVOD, f"no {horovodrun}: run make setup")] for h in hosts}
    deadline = time.monotonic() + timeout_s

    def attempt(group: Sequence[str]) -> DeepAttempt:
        return launch(list(group), interfaces, python, str(horovodrun), gloo, deadline)

    first = attempt(hosts)
    if first.ok:
        return {h: [horovod_passed(hosts, first.run)] for h in hosts}
    alone = halve(hosts, attempt, deadline, MIN_RUN_S) if len(hosts) > 1 else {}
    rest = [h for h in hosts if h not in alone]
    if not alone or not rest:
        return {h: [horovod_failed(hosts, first.run)] for h in hosts}
    again = attempt(rest) if deadline - time.monotonic() >= MIN_RUN_S else None
    note = f"; checked without {', '.join(sorted(alone))}, which failed"
    results = {h: [horovod_failed([h], a.run)] for h, a in alone.items()}
    for h in rest:
        results[h] = [horovod_passed(rest, again.run, note) if again and again.ok
                      else horovod_failed(rest, (again or first).run)]
    return results


def launch(hosts: list[str], interfaces: str, python: str, horovodrun: str, gloo: bool,
           deadline: float) -> DeepAttempt:
    if all(is_local(h) for h in hosts):  # horovodrun then looks for 127.0.0.1's interface
        interfaces = "lo"
    argv = [horovodrun, "-np", str(len(hosts)), "-H", ",".join(f"{h}:1" for h in hosts),
            "--network-interfaces", interfaces, *(["--gloo"] if gloo else []),
            python, str(agents.path("horovod_probe"))]
    run = proc.run(argv, max(1.0, deadline - time.monotonic()), env=proc.job_env())
    return DeepAttempt(tuple(hosts), run, horovod_ok(horovod_events(run.stdout), len(hosts)))
