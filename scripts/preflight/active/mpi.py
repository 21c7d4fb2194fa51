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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .. import proc
from ..agents import source
from ..agents.mpi_probe import SKEW_S, round_robin, slot_measure_s
from ..checks.mpi import (
    ALLREDUCE,
    MESSAGE_MIB,
    MpiHost,
    ProbeOutput,
    empty_measurements,
    explain_exit,
    hang_culprits,
    launch_failure,
    map_results,
    measurements,
    parse_output,
)
from ..result import CheckResult, failed
from .isolate import halve

PROBE_SOURCE = source("mpi_probe")
PAIR_SHARE = 0.7  # of the timeout, for the pair rounds; the rest is for launch and allreduce
BTL_PORT_MIN = 1025


MIN_RUN_S = 4.0  # time left below which no further mpirun is started


@dataclass(frozen=True)
class Attempt:
    """One mpirun over some hosts and what its ranks printed."""

    hosts: tuple[MpiHost, ...]
    layout: tuple[str, ...]
    run: proc.Ran
    output: ProbeOutput

    @property
    def ok(self) -> bool:
        return self.output.result is not None


def run_mpi(hosts: list[MpiHost], interface: str, cidr: str, python: str,
            bandwidth: bool = False, timeout_s: float = 60, ssh_args: Sequence[str] = ()
            ) -> tuple[dict[str, list[CheckResult]], dict]:
    """Per-host mpi.* results and the measurements ({"latency_us": {a: {b: us}}, ...}).
    ssh_args: more options for mpirun's ssh (the preflight's shared connections).

    One mpirun over every host. When it fails as a group, the hosts behind it are found (the
    pairs that never connected; the hosts where no rank started; failing that, halving the set
    until single hosts fail on their own) and the others run again without them, within
    timeout_s: only the culprits fail."""
    if not hosts:
        return {}, empty_measurements()
    problem = missing_tools(python)
    if problem is not None:
        detail, remedy = problem
        return {h.name: [failed(ALLREDUCE, detail, remedy)] for h in hosts}, empty_measurements()
    deadline = time.monotonic() + timeout_s

    def attempt(group: Sequence[MpiHost], measure_bandwidth: bool = bandwidth) -> Attempt:
        return launch(group, cidr, python, measure_bandwidth, ssh_args, deadline)

    first = attempt(hosts)
    if first.ok:
        return judged(first, interface, bandwidth)
    culprits = blamed(first, interface, cidr, attempt, deadline)
    rest = [h for h in hosts if h.name not in culprits]
    if not culprits or not rest or deadline - time.monotonic() < MIN_RUN_S:
        return launch_failure(hosts, list(first.layout), first.run, first.output, interface,
                              cidr), measurements(first.output, list(first.layout))
    results, measured = run_mpi(rest, interface, cidr, python, bandwidth,
                                deadline - time.monotonic(), ssh_args)
    note = f"; checked without {', '.join(sorted(culprits))}, which failed"
    results = {name: [with_note(c, note) for c in checks] for name, checks in results.items()}
    return {**{h.name: [culprits[h.name]] for h in hosts if h.name in culprits}, **results}, \
        measured


def launch(hosts: Sequence[MpiHost], cidr: str, python: str, bandwidth: bool,
           ssh_args: Sequence[str], deadline: float) -> Attempt:
    hosts = list(hosts)
    layout = rank_layout(hosts)
    left = max(1.0, deadline - time.monotonic())
    argv = mpirun_argv(hosts, layout, cidr, python, bandwidth, ssh_args=ssh_args,
                       pair_wait_s=pair_wait_s(left, len(layout), bandwidth))
    run = proc.run(argv, left, hopeless=will_hang(len(layout)))
    return Attempt(tuple(hosts), tuple(layout), run, parse_output(run.stdout))


def judged(attempt: Attempt, interface: str, bandwidth: bool
           ) -> tuple[dict[str, list[CheckResult]], dict]:
    layout, output, run = list(attempt.layout), attempt.output, attempt.run
    return map_results(list(attempt.hosts), layout, output, run, interface, bandwidth), {
        **measurements(output, layout), "ranks": layout,
        "allreduce": output.result.get("allreduce", {}), "library": output.result.get("library"),
        "message_mib": output.result.get("message_mib"), "seconds": round(run.seconds, 2)}


def blamed(first: Attempt, interface: str, cidr: str, attempt: Callable[..., Attempt],
           deadline: float) -> dict[str, CheckResult]:
    """The hosts at fault for a failed group run, each with its own result. A hang names them
    by the pairs that never connected or the ranks that never started; an mpirun that exited
    names nobody, so halving finds the hosts that fail on their own."""
    hosts, layout = list(first.hosts), list(first.layout)
    if first.run.timed_out:
        verdicts = launch_failure(hosts, layout, first.run, first.output, interface, cidr)
        culprits = hang_culprits(hosts, layout, first.output)
        return {name: verdicts[name][0] for name in culprits}
    if len(hosts) < 2:
        return {}
    # Without the bandwidth rounds: this is about starting.
    alone = halve(hosts, lambda part: attempt(part, False), deadline, MIN_RUN_S,
                  key=lambda h: h.name)
    return {name: failed(ALLREDUCE, *explain_exit(a.run, [name])) for name, a in alone.items()}


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
                ssh_args: Sequence[str] = ()) -> list[str]:
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
             "--pair-wait-s", f"{pair_wait_s:g}"]
    if bandwidth:
        argv.append("--bandwidth")
    return argv


def pair_wait_s(timeout_s: float, ranks: int, bandwidth: bool = False) -> float:
    """How long the opener of a pair waits for its first message to get through: the pair
    rounds get most of the timeout, and each round's slot is this wait plus fixed parts. At
    least 1.5 s (a SYN lost once is sent again after 1 s), at most 5 s (twice: after 3 s)."""
    rounds = max(1, len(round_robin(ranks)))
    share = timeout_s * PAIR_SHARE / rounds - SKEW_S - slot_measure_s(bandwidth)
    return round(min(5.0, max(1.5, share)), 1)


def will_hang(ranks: int) -> Callable[[str], bool]:
    """True once every rank has left all its pairs and one was stuck: the collectives that
    follow need every connection, so they can only hang."""
    def check(stdout: str) -> bool:
        output = parse_output(stdout)
        left = Counter(rank for rank, _ in output.left)
        return bool(output.stuck) and all(left[r] >= ranks - 1 for r in range(ranks))
    return check
