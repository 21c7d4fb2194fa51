"""--deep: one real Horovod allreduce through horovodrun itself, on the hosts that passed.

The job's own launcher, the job's own imports (agents/horovod_probe.py imports Horovod's
TensorFlow layer on every host, as train.py does): what only a real start shows, such as a
Horovod built against another TensorFlow, fails here and not in the first minute of training.
It costs a TensorFlow import on every host (a few seconds of CPU each) and is opt-in. A group
that fails is narrowed to its culprits by the same isolation as the MPI check.
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
from .isolate import Budget, isolate

MIN_RUN_S = 10.0  # a TensorFlow import and a Horovod start need at least this


@dataclass(frozen=True)
class DeepAttempt:
    hosts: tuple[str, ...]
    run: proc.Ran
    ok: bool


def run_deep(hosts: list[str], interfaces: str, python: str, gloo: bool, timeout_s: float
             ) -> dict[str, list[CheckResult]]:
    """mpi.horovod for each host. interfaces: horovodrun's --network-interfaces value. A group
    that fails is narrowed by isolation (active/isolate.py) within timeout_s more."""
    if not hosts:
        return {}
    horovodrun = Path(python).parent / "horovodrun"
    if not horovodrun.exists():
        return {h: [skipped(HOROVOD, f"no {horovodrun}: run make setup")] for h in hosts}

    def attempt(group: Sequence[str], limit_s: float) -> DeepAttempt:
        return launch(list(group), interfaces, python, str(horovodrun), gloo, limit_s)

    first = attempt(hosts, timeout_s)
    if first.ok:
        return {h: [horovod_passed(hosts, first.run)] for h in hosts}
    found = isolate(hosts, attempt, Budget(time.monotonic() + timeout_s, MIN_RUN_S,
                                           alone_s=timeout_s / 2, confirm_s=timeout_s))
    if found.launcher is not None:
        return {h: [horovod_failed(hosts, found.launcher.run,
                                   "each host failed alone with this machine")] for h in hosts}
    results = {h: [horovod_failed([h], v.attempt.run, f"{h} {v.how}")]
               for h, v in found.culprits.items()}
    rest = [h for h in hosts if h not in results]
    note = f"; checked without {', '.join(sorted(results))}, which failed" if results else ""
    for h in rest:
        results[h] = [horovod_passed(rest, found.final.run, note)
                      if found.final is not None and found.final.ok
                      else horovod_failed(rest, (found.final or first).run)]
    return results


def launch(hosts: list[str], interfaces: str, python: str, horovodrun: str, gloo: bool,
           limit_s: float) -> DeepAttempt:
    if all(is_local(h) for h in hosts):  # horovodrun then looks for 127.0.0.1's interface
        interfaces = "lo"
    argv = [horovodrun, "-np", str(len(hosts)), "-H", ",".join(f"{h}:1" for h in hosts),
            "--network-interfaces", interfaces, *(["--gloo"] if gloo else []),
            python, str(agents.path("horovod_probe"))]
    run = proc.run(argv, max(1.0, limit_s), env=proc.job_env())
    return DeepAttempt(tuple(hosts), run, horovod_ok(horovod_events(run.stdout), len(hosts)))
