"""mpi.allreduce, mpi.latency, mpi.bandwidth: the verdicts on the job's first collective.

active/mpi.py runs mpirun with one rank per host (agents/mpi_probe.py) over the same transport
the job will use: TCP on the chosen network only, no shared memory and no UCX, so what passes
here is what Horovod meets. The probe times every pair of hosts, then runs a checked allreduce;
this module turns its output (or its absence) into results per host.

The classic failure is not an error but a hang: a firewall drops MPI's connections to ports
above 1024 and the allreduce waits forever; or a daemon starts and never reports back. Whatever
the cause, the hosts behind it are found by runs of fewer hosts, not by reading the output.

Ids:
- `mpi.allreduce`: mpirun starts a rank on every host and an allreduce returns the right sum;
  when the group fails or hangs, isolation (active/isolate.py) names the hosts behind it and
  the others pass without them; a host that passes only when tried again alone warns.
- `mpi.latency`: half the round trip of 8 bytes per host pair; a pair far above the others
  warns.
- `mpi.bandwidth`: with --bandwidth, MB/s per direction of each pair; far below the others warns.
- `mpi.horovod`: with --deep, horovodrun itself starts one rank per host that imports Horovod's
  TensorFlow layer and allreduces; a host whose import or collective fails (a Horovod built
  against another TensorFlow) fails, named by halving the hosts.
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..agents import parse_event
from ..agents.mpi_probe import opener
from ..proc import Ran
from ..result import CheckResult, failed, passed, skipped, warned
from .blame import blame

FAMILY = "mpi"
ALLREDUCE = "mpi.allreduce"
LATENCY = "mpi.latency"
BANDWIDTH = "mpi.bandwidth"
HOROVOD = "mpi.horovod"
IDS = (ALLREDUCE, LATENCY, BANDWIDTH, HOROVOD)
STAGE = "active"
MESSAGE_MIB = 8
SLOW_LATENCY = 5.0  # a pair this many times the typical latency (and 250 us above it) is slow
# The margin keeps scheduling noise on busy or shared cores (16 simulated hosts on 2 cores reach
# 100 us) from reading as a slow link; on a LAN a quarter of a millisecond more is worth a look.
SLOW_LATENCY_MARGIN_US = 250.0
SLOW_BANDWIDTH = 8.0  # a pair this many times below the typical bandwidth is slow (a 1 Gb/s
# link among 10 Gb/s ones is; the spread of a busy host is not)


@dataclass(frozen=True)
class MpiHost:
    """A host for mpirun: the name it is reached by (mpirun's -H), its address, its slots."""

    name: str
    address: str
    slots: int


@dataclass(frozen=True)
class ProbeOutput:
    """The probe's JSON lines by kind: the ranks that started, the (rank, peer) pairs each rank
    turned to, left, and gave up on (stuck), the figures of the finished pairs, and rank 0's
    result (None if it never came)."""

    started: frozenset[int] = frozenset()
    attempts: frozenset[tuple[int, int]] = frozenset()
    left: frozenset[tuple[int, int]] = frozenset()
    stuck: frozenset[tuple[int, int]] = frozenset()
    cut: frozenset[tuple[int, int]] = frozenset()  # (opener, peer): its first message never went
    pairs: tuple[dict, ...] = ()
    result: dict | None = None


def empty_measurements() -> dict:
    return {"latency_us": {}, "bandwidth_MBps": {}}



def parse_output(stdout: str) -> ProbeOutput:
    events = [e for e in (parse_event(line) for line in stdout.splitlines()) if e]
    kind = {name: [e for e in events if e["event"] == name]
            for name in ("init", "start", "done", "stuck", "pair", "result")}
    return ProbeOutput(
        started=frozenset(e.get("rank") for e in kind["init"]),
        attempts=frozenset((e.get("rank"), e.get("peer")) for e in kind["start"]),
        left=frozenset((e.get("rank"), e.get("peer")) for e in kind["done"] + kind["stuck"]),
        stuck=frozenset((e.get("rank"), e.get("peer")) for e in kind["stuck"]),
        cut=frozenset((e.get("rank"), e.get("peer")) for e in kind["stuck"]
                      if e.get("opening") and e.get("phase") == "meet"),
        pairs=tuple(e for e in kind["pair"] if {"a", "b", "latency_us"} <= e.keys()),
        result=next(iter(kind["result"]), None))


# --- when no result came back -------------------------------------------------------------------
# Who is at fault is found by isolation (active/isolate.py), never read from the output; these
# say what was observed, for the detail, and what to look at, for the remedy.

def what_happened(run: Ran, output: ProbeOutput | None = None, ranks: int = 0) -> str:
    """What a run without a result did, as a phrase: "hung for 10 s before any rank started"."""
    if not run.timed_out:
        return f"mpirun exited with {run.returncode}: {headline(run.stderr + run.stdout)}"
    seconds = run.limit_s or run.seconds
    what = (f"was stopped after {run.seconds:.0f} s, as it could only hang" if run.gave_up
            else f"hung for {seconds:.0f} s")
    if output is None or not ranks:
        return what
    if not output.started:
        return f"{what} before any rank started"
    if len(output.started) < ranks:
        return f"{what} with {len(output.started)} of {ranks} ranks started"
    blocked = blocked_pairs(output, ranks)
    return f"{what} with {len(blocked)} pair(s) never connected" if blocked else what


def remedy_for(name: str, run: Ran, cidr: str) -> str:
    """What to look at on a host found at fault by isolation."""
    if not run.timed_out:
        return explain_exit(run, [name])[1]
    return (f"check what Open MPI needs on {name}: its daemon (ssh {name} orted --help), a "
            f"writable session directory ($TMPDIR or /tmp), the venv's Python, and that {name} "
            f"reaches this machine and the other hosts on {cidr} over TCP ports above 1024; "
            f"or leave {name} out")


def launcher_failure(name: str, run: Ran, hosts: int, cidr: str) -> CheckResult:
    """Every host failed alone with the launcher: the fault is the launcher's."""
    return failed(ALLREDUCE, f"mpirun failed with each of the {hosts} hosts alone, so the fault "
                             f"is on this machine, which launches them: {what_happened(run)}",
                  f"check Open MPI on this machine (mpirun --version) and that the hosts reach "
                  f"it on {cidr} over TCP ports above 1024 (their daemons report back there); "
                  f"run by hand: {shown_command(run.argv)}")


def group_failure(hosts: list[MpiHost], layout: list[str], run: Ran, interface: str,
                  cidr: str) -> dict[str, list[CheckResult]]:
    """A group that failed while no host could be shown at fault (each passes alone, halving
    found none, or the time ran out): the same verdict on every host. A run that ended with an
    error fails them all; one that only hung or ran out of time, where nobody's fault was shown,
    warns: a crowd slower than its time limit is load, not a fault of any host in it."""
    names = ", ".join(h.name for h in hosts)
    output = parse_output(run.stdout)
    detail = (f"mpirun over {names} {what_happened(run, output, len(layout))}, and no host "
              f"could be shown at fault on its own")
    remedy = (f"open TCP ports 1024-65535 between the hosts on {interface} and check that "
              f"{cidr} is the network every host shares; run by hand: {shown_command(run.argv)}")
    if run.stopped is None:
        return {h.name: [failed(ALLREDUCE, detail, remedy)] for h in hosts}
    remedy = (f"give the job more time to start (horovodrun --start-timeout, or the preflight's "
              f"--timeout) and watch the load on the hosts; if it hangs then too, {remedy}")
    return {h.name: [warned(ALLREDUCE, f"{detail}: kept", remedy)] for h in hosts}


def slow_result(name: str, seconds: float, group: Ran) -> CheckResult:
    """A host that passed only when tried again alone: slow, not faulty."""
    return warned(ALLREDUCE, f"{name} passed only when tried again alone, after the group run "
                             f"({what_happened(group)}), in {seconds:.1f} s",
                  f"check {name}'s load and its ssh login time (time ssh {name} true); the job "
                  f"starts as slowly")


def unmeasured_bandwidth(group: Ran) -> CheckResult:
    return warned(BANDWIDTH, f"not measured: the run with the bandwidth rounds "
                             f"{what_happened(group)}, while the hosts pass without them",
                  "run the preflight again with a longer --timeout to measure bandwidth")


def blocked_pairs(output: ProbeOutput, n: int) -> list[tuple[int, int]]:
    """(opener, other) for the pairs whose connection never came up: where the opener's first
    message never went. Failing those, each pair that a rank gave up on or that both turned to
    and never finished; a pair one rank never reached was only waiting behind another."""
    if output.cut:
        return sorted(output.cut)
    done = {frozenset((p["a"], p["b"])) for p in output.pairs}
    return [(opener(a, b, n), b if opener(a, b, n) == a else a)
            for a, b in itertools.combinations(range(n), 2)
            if (a, b) in output.stuck or (b, a) in output.stuck
            or ((a, b) in output.attempts and (b, a) in output.attempts
                and frozenset((a, b)) not in done)]


# What a failed rank or ssh says that matters more than mpirun's framing around it.
TELLING = re.compile(r"(command not found|No such file or directory|Permission denied|"
                     r"Host key verification failed|error while loading shared libraries|"
                     r"undefined symbol|^ssh: |^[\w.]+(Error|Exception): )")
DASHES = re.compile(r"^-{20,}$")


def headline(text: str) -> str:
    """The first meaningful line of mpirun's output: a rank's or ssh's own error where there is
    one, else the first sentence of mpirun's first message (framed by lines of dashes), else the
    last line."""
    lines = [strip_tag(line) for line in text.splitlines()]
    lines = [line for line in lines if line]
    telling = [line for line in lines if TELLING.search(line)]
    if telling:
        return telling[-1][:200] if "Error" in telling[-1] else telling[0][:200]
    framed = [i for i, line in enumerate(lines) if DASHES.match(line)]
    if framed and framed[0] + 1 < len(lines):
        paragraph = []
        for line in lines[framed[0] + 1:]:
            if DASHES.match(line) or line.endswith(":"):
                break
            paragraph.append(line)
        sentence = " ".join(paragraph).split(". ")[0].rstrip(".")
        if sentence:
            return sentence[:200]
    return lines[-1][:200] if lines else "no output"


def strip_tag(line: str) -> str:
    """A line without mpirun's '[1,0]<stderr>:' (or horovodrun's '[0]<stderr>:') tag."""
    return re.sub(r"^\[\d+(,\d+)?\]<std(out|err)>:", "", line).strip()


def explain_exit(run: Ran, hosts: Sequence[str]) -> tuple[str, str]:
    """(detail, remedy) for an mpirun that exited without a result, over `hosts`."""
    text = run.stderr + run.stdout
    where = f"on {hosts[0]}" if len(hosts) == 1 else f"over {', '.join(hosts)}"
    line = headline(text)
    if "No module named 'mpi4py'" in text or 'No module named "mpi4py"' in text:
        return (f"mpi4py is missing {where}: {line}",
                "install the venv at the same path on every host: make setup")
    if ("unable to reliably start" in text or "ORTE daemon" in text or "ssh:" in text
            or "Permission denied" in text or "orted" in text):
        return (f"mpirun could not start its daemon {where}: {line}",
                f"check that ssh {hosts[0] if len(hosts) == 1 else 'HOST'} orted --help works "
                "without a password and prints Open MPI's usage (see software.orted)")
    return (f"mpirun {where} exited with {run.returncode}: {line}",
            "run it by hand to see the whole error: " + shown_command(run.argv))


def shown_command(argv: Iterable[str]) -> str:
    # The probe's source is long: show it as the file it came from.
    parts = list(argv)
    if "-c" in parts:
        at = parts.index("-c")
        parts[at:at + 2] = ["scripts/preflight/agents/mpi_probe.py"]
    return " ".join(parts)


# --- mapping a result to hosts ------------------------------------------------------------------

def measurements(output: ProbeOutput, layout: list[str]) -> dict:
    """{"latency_us": {a: {b: us}} both ways, "bandwidth_MBps": {a: {b: MB/s from a to b}}}."""
    latency = [[p["a"], p["b"], p["latency_us"]] for p in output.pairs]
    rates = [row for p in output.pairs if p.get("MBps")
             for row in ([p["a"], p["b"], p["MBps"]["a_b"]], [p["b"], p["a"], p["MBps"]["b_a"]])]
    return {"latency_us": pair_matrix(latency, layout, symmetric=True),
            "bandwidth_MBps": pair_matrix(rates, layout, symmetric=False)}


def map_results(hosts: list[MpiHost], layout: list[str], output: ProbeOutput, run: Ran,
                interface: str, bandwidth: bool) -> dict[str, list[CheckResult]]:
    measured = measurements(output, layout)
    latency, rates = measured["latency_us"], measured["bandwidth_MBps"]
    allreduce = allreduce_result(output.result or {}, layout, run)
    # Pairs given up on that still let the allreduce through connected late: slow or lossy.
    late = blame(frozenset((layout[a], layout[b])) for a, b in output.stuck)
    slow_latency = slow_hosts(latency, above=True)
    slow_rate = slow_hosts(rates, above=False)
    results: dict[str, list[CheckResult]] = {}
    for host in hosts:
        checks = [allreduce, latency_result(host.name, latency, slow_latency, late, interface)]
        if bandwidth:
            checks.append(bandwidth_result(host.name, rates, slow_rate, interface))
        results[host.name] = checks
    return results


def pair_matrix(rows: Iterable[list], layout: list[str], symmetric: bool
                ) -> dict[str, dict[str, float]]:
    """[[rank_a, rank_b, value], ...] -> {host_a: {host_b: value}} (both ways if symmetric)."""
    matrix: dict[str, dict[str, float]] = {}
    for a, b, value in rows:
        matrix.setdefault(layout[a], {})[layout[b]] = value
        if symmetric:
            matrix.setdefault(layout[b], {})[layout[a]] = value
    return matrix


def allreduce_result(result: dict, layout: list[str], run: Ran) -> CheckResult:
    info = result.get("allreduce", {})
    hosts = ", ".join(dict.fromkeys(layout))
    what = (f"sum of ranks {info.get('sum_of_ranks')} (expected {info.get('expected')}), "
            f"{info.get('array_len')} doubles")
    if info.get("ok"):
        ranks = f"{len(layout)} rank{'s' if len(layout) != 1 else ''}"
        return passed(ALLREDUCE, f"allreduce over {ranks} on {hosts} checked: "
                                 f"{what}; mpirun took {run.seconds:.1f}s")
    return failed(ALLREDUCE, f"allreduce over {hosts} returned wrong values: {what}",
                  "the hosts disagree on the data: check that every host runs the same Open "
                  "MPI and mpi4py (make setup on each)")


def pair_values(matrix: Mapping[str, Mapping[str, float]]) -> list[tuple[frozenset[str], float]]:
    """Every measurement with the pair of hosts it was between (a pair may have two)."""
    return [(frozenset((a, b)), v) for a, row in matrix.items() for b, v in row.items()]


def typical(matrix: Mapping[str, Mapping[str, float]], best: Callable[[Iterable[float]], float]
            ) -> float:
    """The median over hosts of each host's best link: one slow host, which is on n - 1 of the
    pairs (two of three with three hosts), cannot drag this baseline towards itself."""
    return statistics.median(best(row.values()) for row in matrix.values() if row)


def slow_hosts(matrix: Mapping[str, Mapping[str, float]], above: bool) -> set[str]:
    """The hosts behind pairs far off the baseline (latency far above, bandwidth far below)."""
    values = pair_values(matrix)
    if len({pair for pair, _ in values}) < 2:
        return set()
    if above:
        base = typical(matrix, min)
        slow = [p for p, v in values
                if v > base * SLOW_LATENCY and v > base + SLOW_LATENCY_MARGIN_US]
    else:
        base = typical(matrix, max)
        slow = [p for p, v in values if v * SLOW_BANDWIDTH < base]
    return blame(slow)


def peers_text(row: Mapping[str, float], unit: str) -> str:
    return ", ".join(f"{peer} {value:.0f} {unit}" for peer, value in sorted(row.items()))


def latency_result(name: str, latency: Mapping[str, Mapping[str, float]], slow: set[str],
                   late: set[str], interface: str) -> CheckResult:
    row = latency.get(name, {})
    remedy = (f"check {name}'s link and load: ethtool {interface} (speed, errors), "
              f"tc qdisc show dev {interface}, ping -c 100 {name} for loss")
    if name in late:
        return warned(LATENCY, f"an MPI pair with {name} took too long to connect and was not "
                               f"timed (timed: {peers_text(row, 'us') or 'none'})", remedy)
    if not row:
        return skipped(LATENCY, "one rank: no pair to time")
    if name in slow:
        return warned(LATENCY, f"MPI latency from {name}: {peers_text(row, 'us')}, far above "
                               f"the {typical(latency, min):.0f} us between the other hosts",
                      remedy)
    return passed(LATENCY, f"MPI latency (half round trip, 8 bytes) median "
                           f"{statistics.median(row.values()):.0f} us: {peers_text(row, 'us')}")


def bandwidth_result(name: str, rates: Mapping[str, Mapping[str, float]], slow: set[str],
                     interface: str) -> CheckResult:
    sent = rates.get(name, {})
    if not sent:
        return skipped(BANDWIDTH, "one rank: no pair to measure")
    text = f"MPI bandwidth from {name} ({MESSAGE_MIB} MiB messages): {peers_text(sent, 'MB/s')}"
    if name in slow:
        return warned(BANDWIDTH, f"{text}, far below the {typical(rates, max):.0f} MB/s "
                                 "between the other hosts",
                      f"check {name}'s link speed and errors: ethtool {interface}; "
                      f"ip -s link show {interface}")
    return passed(BANDWIDTH, text)


# --- the deep check: Horovod itself ---------------------------------------------------------------

def horovod_events(stdout: str) -> list[dict]:
    """The deep check's rank lines, tags stripped."""
    events = (parse_event(strip_tag(line)) for line in stdout.splitlines())
    return [e for e in events if e and e.get("event") == "horovod"]


def horovod_ok(events: list[dict], ranks: int) -> bool:
    """Every rank reported, and each got the right sum."""
    return len({e.get("rank") for e in events}) == ranks and all(
        e.get("sum") == e.get("expected") for e in events)


def horovod_passed(hosts: Sequence[str], run: Ran, note: str = "") -> CheckResult:
    return passed(HOROVOD, f"horovodrun: Horovod's TensorFlow allreduce over {len(hosts)} "
                           f"host(s) ({', '.join(hosts)}) checked in {run.seconds:.1f}s{note}")


def horovod_failed(hosts: Sequence[str], run: Ran, how: str = "") -> CheckResult:
    """how: how isolation narrowed it ("h2 failed alone with the launcher"), if it did."""
    where = f"on {hosts[0]}" if len(hosts) == 1 else f"over {', '.join(hosts)}"
    state = (f"hung for {run.seconds:.0f}s" if run.timed_out
             else f"exited with {run.returncode}")
    shown = f"{how}: horovodrun {state}" if how else f"horovodrun {where} {state}"
    return failed(HOROVOD, f"{shown}: {headline(run.stderr + run.stdout)}",
                  f"rebuild Horovod against this TensorFlow where it fails: make setup FORCE=1"
                  f"{' on ' + hosts[0] if len(hosts) == 1 else ''}; then try by hand: "
                  f"python -c 'import horovod.tensorflow as h; h.init()'")
