"""Runs the MPI check: mpirun with one rank per host (agents/mpi_probe.py), bounded in time.

mpirun runs in its own process group under a timeout (preflight.proc), and is stopped sooner
when the probe's output shows it must hang (every rank is past its pairs and one pair never
connected). checks/mpi.py turns what came back into results per host.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .. import proc
from ..agents import source
from ..agents.mpi_probe import SKEW_S, partners, schedule, slot_measure_s
from ..checks.blame import blame
from ..checks.mpi import (
    ALLREDUCE,
    MESSAGE_MIB,
    MpiHost,
    ProbeOutput,
    blocked_pairs,
    empty_measurements,
    group_failure,
    launcher_failure,
    map_results,
    measurements,
    parse_output,
    remedy_for,
    slow_result,
    unmeasured_bandwidth,
    what_happened,
)
from ..result import CheckResult, failed
from .isolate import Budget, isolate

PROBE_SOURCE = source("mpi_probe")
# What starting one more host adds to a group run, allowed on top of its timeout: measured on
# 2 shared cores, 100 hosts took 19-23 s from mpirun to the ranks past MPI_Init (an ssh
# session, an orted, a Python with mpi4py each); a real cluster starts them side by side.
LAUNCH_PER_HOST_S = 0.3
PAIR_SHARE = 0.7  # of the timeout, for the pair rounds; the rest is for launch and allreduce
MIN_PAIR_WAIT_S = 1.5  # a pair's wait for its first message at least (pair_wait_s())
BTL_PORT_MIN = 1025


MIN_RUN_S = 4.0  # time left below which no further mpirun is started
ALONE_S = 10.0  # one host alone: an ssh session, a daemon and one Python rank
CONFIRM_FACTOR = 2.0  # a host that timed out alone is tried again with this much more time
STOP_GRACE_S = 1.0  # TERM to KILL for a stopped mpirun: one whose daemons hang never exits
ISOLATION_FACTOR = 2.0  # isolation may take this many times the group run's time


@dataclass(frozen=True)
class Attempt:
    """One mpirun over some hosts and what its ranks printed."""

    hosts: tuple[MpiHost, ...]
    layout: tuple[str, ...]
    run: proc.Ran
    output: ProbeOutput
    measured: bool = False  # with the bandwidth rounds

    @property
    def ok(self) -> bool:
        return self.output.result is not None


def run_mpi(hosts: list[MpiHost], interface: str, cidr: str, python: str,
            bandwidth: bool = False, timeout_s: float = 60, ssh_args: Sequence[str] = (),
            alone_s: float = ALONE_S, seed: int = 0
            ) -> tuple[dict[str, list[CheckResult]], dict]:
    """Per-host mpi.* results and the measurements ({"latency_us": {a: {b: us}}, ...}).
    ssh_args: more options for mpirun's ssh (the preflight's shared connections).

    One mpirun over every host, within timeout_s. When it fails or hangs, whatever the cause,
    isolation (active/isolate.py) finds the hosts behind it with runs of one host, confirmed,
    then halving, within twice timeout_s more; alone_s bounds one run of one host. seed: of
    the random pairings beyond ALL_PAIRS_UP_TO hosts (agents/mpi_probe.py schedule())."""
    if not hosts:
        return {}, empty_measurements()
    problem = missing_tools(python)
    if problem is not None:
        detail, remedy = problem
        return {h.name: [failed(ALLREDUCE, detail, remedy)] for h in hosts}, empty_measurements()

    def attempt(group: Sequence[MpiHost], limit_s: float, measure: bool = False,
                start_s: float | None = None) -> Attempt:
        if start_s is None and len(group) == 1 and limit_s <= alone_s:  # a first run alone
            start_s = limit_s / 2
        return launch(group, cidr, python, measure, ssh_args, limit_s, start_s, seed=seed)

    first = attempt(hosts, max(timeout_s, rounds_floor_s(len(hosts), bandwidth, seed))
                    + LAUNCH_PER_HOST_S * len(hosts), bandwidth,
                    start_limit_s(timeout_s, len(hosts)))
    if first.ok:
        return judged(first, interface, bandwidth)
    budget = Budget(time.monotonic() + ISOLATION_FACTOR * timeout_s, MIN_RUN_S, alone_s,
                    CONFIRM_FACTOR * alone_s)
    found = isolate(hosts, attempt, budget, key=lambda h: h.name, hint=pointed_at)
    if found.launcher is not None:
        return {h.name: [launcher_failure(h.name, found.launcher.run, len(hosts), cidr)]
                for h in hosts}, empty_measurements()
    culprits = {name: failed(ALLREDUCE, f"{name} {v.how}: {observed(v.attempt)}",
                             remedy_for(name, v.attempt.run, cidr))
                for name, v in found.culprits.items()}
    rest = [h for h in hosts if h.name not in culprits]
    final = found.final
    if final is not None and final.ok and bandwidth and budget.allows():
        measured = attempt(rest, budget.left(), True)  # the rounds isolation left out
        final = measured if measured.ok else final
    results, measured = verdicts(rest, final or first, found.slow, first.run, interface, cidr,
                                 bandwidth, sorted(culprits))
    return {**results, **{n: [c] for n, c in culprits.items()}}, measured


def verdicts(rest: list[MpiHost], final: Attempt, slow: Mapping[str, float], group: proc.Ran,
             interface: str, cidr: str, bandwidth: bool, culprits: list[str]
             ) -> tuple[dict[str, list[CheckResult]], dict]:
    """The results of the hosts isolation did not blame, from the last run over them."""
    if not final.ok:
        return group_failure(rest, list(final.layout), final.run, interface, cidr), \
            measurements(final.output, list(final.layout))
    results, measured = judged(final, interface, bandwidth and final.measured)
    note = narrowed_note(culprits, slow)
    results = {name: [with_note(c, note) for c in checks] for name, checks in results.items()}
    for name, seconds in slow.items():
        if name in results:
            results[name][0] = slow_result(name, seconds, group)
    if bandwidth and not final.measured:
        for checks in results.values():
            checks.append(unmeasured_bandwidth(group))
    return results, measured


def pointed_at(attempt: Attempt) -> list[str]:
    """The hosts a failed run's output points at, as a first guess for isolation: where no rank
    started, else the hosts common to the pairs that never connected (on a tie, the host the
    others could not reach: a firewall drops what comes in)."""
    layout = list(attempt.layout)
    started = {layout[r] for r in attempt.output.started if 0 <= r < len(layout)}
    absent = [h for h in dict.fromkeys(layout) if h not in started]
    if absent and started:
        return absent
    pairs = blocked_pairs(attempt.output, len(layout))
    inbound = Counter(layout[b] for _, b in pairs)
    outbound = Counter(layout[a] for a, _ in pairs)
    return sorted(blame((frozenset((layout[a], layout[b])) for a, b in pairs),
                        {h: inbound[h] - outbound[h] for h in layout}))


def observed(attempt: Attempt) -> str:
    return what_happened(attempt.run, attempt.output, len(attempt.layout))


def rounds_floor_s(ranks: int, bandwidth: bool, seed: int = 0) -> float:
    """The least time a group run needs for its pair rounds when each slot is as short as it
    gets (pair_wait_s() at its floor), over the PAIR_SHARE of the run they are given. A limit
    below it stops rounds that are on time: with --bandwidth beyond 16 hosts, 8-9 rounds of
    up to 6 s each, which a 30 s timeout and the launch could not hold."""
    rounds = max(1, len(schedule(ranks, seed)))
    return rounds * (MIN_PAIR_WAIT_S + SKEW_S + slot_measure_s(bandwidth)) / PAIR_SHARE


def start_limit_s(timeout_s: float, hosts: int) -> float:
    """How long a group run may take for every rank to start before it is stopped as hung: a
    third of its time, and LAUNCH_PER_HOST_S more per host (each is an ssh session and a
    daemon that mpirun starts from here, and a Python that initialises MPI)."""
    return timeout_s / 3 + LAUNCH_PER_HOST_S * hosts


def narrowed_note(culprits: list[str], slow: Mapping[str, float]) -> str:
    note = f"; checked without {', '.join(culprits)}, which failed" if culprits else ""
    if slow and not culprits:
        note = "; passed when run again"
    return note


def launch(hosts: Sequence[MpiHost], cidr: str, python: str, bandwidth: bool,
           ssh_args: Sequence[str], limit_s: float, start_s: float | None = None,
           seed: int = 0) -> Attempt:
    hosts = list(hosts)
    layout = rank_layout(hosts)
    limit_s = max(1.0, limit_s)
    argv = mpirun_argv(hosts, layout, cidr, python, bandwidth, ssh_args=ssh_args,
                       # the launch's own allowance is not the pairs' to spend
                       pair_wait_s=pair_wait_s(limit_s - LAUNCH_PER_HOST_S * len(hosts),
                                               len(layout), bandwidth, seed),
                       seed=seed)
    run = proc.run(argv, limit_s, hopeless=will_hang(len(layout), start_s, seed),
                   grace_s=STOP_GRACE_S)
    return Attempt(tuple(hosts), tuple(layout), run, parse_output(run.stdout), bandwidth)


def judged(attempt: Attempt, interface: str, bandwidth: bool
           ) -> tuple[dict[str, list[CheckResult]], dict]:
    layout, output, run = list(attempt.layout), attempt.output, attempt.run
    return map_results(list(attempt.hosts), layout, output, run, interface, bandwidth), {
        **measurements(output, layout), "ranks": layout,
        "allreduce": output.result.get("allreduce", {}), "library": output.result.get("library"),
        "message_mib": output.result.get("message_mib"), "seconds": round(run.seconds, 2),
        **phase_seconds(run.seconds, output.result)}


def phase_seconds(run_s: float, result: Mapping) -> dict[str, float]:
    """The run split by the probe's own clock: the launch (mpirun to the first rank past
    MPI_Init), the pair rounds, and the rest (the allreduce checks, the ending)."""
    ranks_s, pairs_s = result.get("seconds"), result.get("pairs_s")
    if not isinstance(ranks_s, (int, float)) or not isinstance(pairs_s, (int, float)):
        return {}
    return {"launch_s": round(max(0.0, run_s - ranks_s), 2), "pairs_s": round(pairs_s, 2),
            "collectives_s": round(max(0.0, ranks_s - pairs_s), 2)}


def with_note(check: CheckResult, note: str) -> CheckResult:
    return dataclasses.replace(check, detail=check.detail + note)


# --- launching ----------------------------------------------------------------------------------

def missing_tools(python: str) -> tuple[str, str] | None:
    """(detail, remedy) when mpirun or mpi4py is not there to run the probe at all."""
    if shutil.which("mpirun") is None:
        return ("mpirun is not installed on this machine",
                "install Open MPI and the venv: make setup")
    if python == sys.executable:  # the usual case: ask this interpreter, start no other
        if importlib.util.find_spec("mpi4py") is None:
            return f"mpi4py is not installed in {python}", "install it: make setup"
        return None
    try:
        proc = subprocess.run([python, "-c", "import mpi4py"], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run {python}: {exc}", "create the venv: make setup"
    if proc.returncode != 0:
        return f"mpi4py is not installed in {python}", "install it: make setup"
    return None


def rank_layout(hosts: list[MpiHost]) -> list[str]:
    """The host of each rank: one per host; two on a lone host with two slots, so that even
    then the collective crosses the TCP transport between two processes."""
    if len(hosts) == 1 and hosts[0].slots >= 2:
        return [hosts[0].name] * 2
    return [h.name for h in hosts]


def mpirun_argv(hosts: list[MpiHost], layout: list[str], cidr: str, python: str,
                bandwidth: bool, uid: int | None = None, pair_wait_s: float = 5.0,
                ssh_args: Sequence[str] = (), seed: int = 0) -> list[str]:
    counts = {h.name: layout.count(h.name) for h in hosts}
    argv = ["mpirun", "-np", str(len(layout)),
            "-H", ",".join(f"{name}:{n}" for name, n in counts.items() if n),
            "--map-by", "slot", "--bind-to", "none",
            # TCP between all ranks, on the job's network only: no shared memory, no UCX (which
            # would pick its own interfaces), and the same network for mpirun's own traffic.
            "--mca", "pml", "ob1", "--mca", "btl", "self,tcp",
            "--mca", "btl_tcp_if_include", cidr, "--mca", "oob_tcp_if_include", cidr,
            # Open MPI listens at the first free port from 1024; with more ranks per host, or
            # a port still in TIME_WAIT, that is 1025 and up. Starting there makes a firewall
            # that spares only ports up to 1024 fail every time rather than now and then.
            "--mca", "btl_tcp_port_min_v4", str(BTL_PORT_MIN),
            # mpirun's ssh: never a prompt, and through the preflight's open connections when
            # ssh_args say so. Every daemon then starts from here, not from a daemon (tree
            # spawn) that has no such connection.
            "--mca", "plm_rsh_args", " ".join(["-o BatchMode=yes -o ConnectTimeout=5",
                                               *ssh_args])]
    if ssh_args:
        argv += ["--mca", "plm_rsh_no_tree_spawn", "1"]
    if (os.geteuid() if uid is None else uid) == 0:
        argv.append("--allow-run-as-root")
    for name in ("PATH", "LD_LIBRARY_PATH"):
        if os.environ.get(name):
            argv += ["-x", name]
    argv += [python, "-c", PROBE_SOURCE, "--size-mib", str(MESSAGE_MIB),
             "--pair-wait-s", f"{pair_wait_s:g}", "--seed", str(seed)]
    if bandwidth:
        argv.append("--bandwidth")
    return argv


def pair_wait_s(timeout_s: float, ranks: int, bandwidth: bool = False, seed: int = 0
                ) -> float:
    """How long the opener of a pair waits for its first message to get through: the pair
    rounds get most of the timeout, and each round's slot is this wait plus fixed parts. At
    least 1.5 s (a SYN lost once is sent again after 1 s), at most 5 s (twice: after 3 s)."""
    rounds = max(1, len(schedule(ranks, seed)))
    share = timeout_s * PAIR_SHARE / rounds - SKEW_S - slot_measure_s(bandwidth)
    return round(min(5.0, max(MIN_PAIR_WAIT_S, share)), 1)


def will_hang(ranks: int, start_s: float | None = None, seed: int = 0
              ) -> Callable[[str], bool]:
    """True once every rank has left all its pairs and one was stuck (the collectives that
    follow need every connection, so they can only hang), or, given start_s, when that long
    after the first look not every rank has started."""
    since = time.monotonic()
    pairs_of = [len(p) for p in partners(ranks, seed)]

    def check(stdout: str) -> bool:
        output = parse_output(stdout)
        if start_s is not None and time.monotonic() - since > start_s \
                and len(output.started) < ranks:
            return True
        left = Counter(rank for rank, _ in output.left)
        return bool(output.stuck) and all(left[r] >= pairs_of[r] for r in range(ranks))
    return check
