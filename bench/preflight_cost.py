"""What the preflight costs: its wall time against the number of hosts, beside the interface
discovery horovodrun does by itself on the same hosts.

horovodrun, given several hosts and no --network-interfaces, starts a task service on every
host over ssh and has each probe the next one's interfaces before it launches anything. Its cost
is the difference between a launch of a trivial command (`true`) with and without
--network-interfaces. Both launches run with --disable-cache: horovodrun otherwise keeps the
result of its checks for an hour in ~/.horovod, and every simulated cluster names its hosts
h1..hN, so a cached result from another cluster would make discovery look free.

The preflight runs from h1, as `make preflight` would there, once with its default checks (the
MPI allreduce included) and once with --no-mpi. Its progress lines on stderr are time-stamped as
they arrive, which splits its time into stages: start-up, probing the hosts, mesh and MTU tests,
and the MPI test.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    HOROVODRUN,
    IFACE,
    PREFIX,
    PYTHON,
    ROOT,
    Cluster,
    Say,
    fmt,
    host_list,
    median,
    new_figure,
    ratio,
    save_figure,
    verdict,
    write_json,
)

from preflight.proc import stop_group

if TYPE_CHECKING:
    from rich.console import Console

NAME = "preflight_cost"
TIMEOUT_S = 420  # horovodrun gets --start-timeout 300: at 64 hosts and more it needs it
START_TIMEOUT_S = 300
SOFT_OPEN_FILES = 1024  # the common default soft limit, which the preflight raises itself
# The preflight's progress lines that open each stage (scripts/preflight/pipeline.py).
STAGE_MARKS = (("probe", "preflight: probing"), ("mesh_mtu", "preflight: facts from"),
               ("mpi", "preflight: MPI allreduce"))


@dataclass(frozen=True)
class PreflightRun:
    seconds: float
    returncode: int
    stages: dict[str, float]  # stage -> seconds spent in it
    tail: str
    report: dict  # the preflight.json it wrote (its "phases": wall and launcher CPU)


# What the timed preflights write; removed when the benchmark is done.
SCRATCH = (Path(f"/tmp/{PREFIX}-{NAME}.hostfile"), Path(f"/tmp/{PREFIX}-{NAME}.json"))


def preflight_argv(hosts: Sequence[str], mpi: bool, scripts: Path | None = None,
                   extra: Sequence[str] = ()) -> list[str]:
    """The preflight's command, under the common soft limit of open files; scripts: another
    revision's scripts/ folder to run instead."""
    argv = [PYTHON, "-m", "preflight", "--hosts", ",".join(hosts),
            "--hostfile", str(SCRATCH[0]), "--report", str(SCRATCH[1]), *extra]
    if scripts is not None:
        argv = ["env", f"PYTHONPATH={scripts}", *argv]
    argv = argv if mpi else [*argv, "--no-mpi"]
    return ["sh", "-c", f'ulimit -Sn {SOFT_OPEN_FILES} && exec "$@"', "sh", *argv]


@contextlib.contextmanager
def worktree(rev: str | None) -> Iterator[Path | None]:
    """The scripts/ folder of git revision rev, checked out in a temporary worktree."""
    if rev is None:
        yield None
        return
    where = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), rev],
                   check=True, capture_output=True, text=True)
    try:
        yield where / "scripts"
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)],
                       check=False, capture_output=True)
        shutil.rmtree(where, ignore_errors=True)


def run_preflight(cluster: Cluster, hosts: Sequence[str], mpi: bool,
                  scripts: Path | None = None, extra: Sequence[str] = ()) -> PreflightRun:
    """One preflight from h1, its stderr lines stamped as they come."""
    SCRATCH[1].unlink(missing_ok=True)
    argv = cluster.exec_argv("h1", preflight_argv(hosts, mpi, scripts, extra))
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=cluster.env(),
                            start_new_session=True)
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend(
        (time.perf_counter() - start, line) for line in proc.stderr), daemon=True)
    reader.start()
    try:
        proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        stop_group(proc)
    seconds = time.perf_counter() - start
    reader.join(timeout=5)
    # The preflight exits 0 when all hosts are healthy, 1 when some are out: both are answers.
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"preflight on {len(hosts)} hosts failed (exit {proc.returncode}):\n"
                           + "".join(line for _, line in lines[-8:]))
    report = json.loads(SCRATCH[1].read_text()) if SCRATCH[1].exists() else {}
    return PreflightRun(seconds, proc.returncode, stages(lines, seconds),
                        "".join(line for _, line in lines[-3:]), report)


def stages(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds per stage, from when each stage's first line came; 'startup' is the time before
    the first (Python and the preflight's imports); the last stage runs to the exit."""
    marks = [("startup", 0.0)]
    for stage, prefix in STAGE_MARKS:
        at = next((t for t, line in lines if line.startswith(prefix)), None)
        if at is not None:
            marks.append((stage, at))
    ends = [at for _, at in marks[1:]] + [total]
    return {stage: round(end - at, 2) for (stage, at), end in zip(marks, ends)}


def horovodrun_argv(hosts: Sequence[str], nics: bool) -> list[str]:
    """A trivial job: all the time is horovodrun's start-up, ssh check, (discovery,) launch."""
    argv = [HOROVODRUN, "--disable-cache", "--start-timeout", str(START_TIMEOUT_S),
            "-np", str(len(hosts)), "-H", host_list(hosts)]
    if nics:
        # One host is local: horovodrun then wants an interface holding 127.0.0.1, and the
        # preflight picks lo there too.
        argv += ["--network-interfaces", IFACE if len(hosts) > 1 else "lo"]
    # mpirun's own wiring on the cluster network too; horovodrun sets btl_tcp_if_include itself.
    return [*argv, "--mpi-args=--mca oob_tcp_if_include 10.231.0.0/24", "true"]


def run_horovodrun(cluster: Cluster, hosts: Sequence[str], nics: bool) -> float:
    result = cluster.run("h1", horovodrun_argv(hosts, nics), TIMEOUT_S)
    if not result.ok:
        raise RuntimeError(f"horovodrun on {len(hosts)} hosts failed: {result.why()}")
    return result.seconds


def measure_hosts(cluster: Cluster, n: int, repeat: int, say: Say,
                  baseline: Path | None = None) -> dict:
    hosts = cluster.hosts(n)
    order = ["preflight", "preflight_no_mpi", "horovodrun", "horovodrun_nics"]
    if baseline is not None:
        order.insert(1, "baseline")
    runs: dict[str, list] = {kind: [] for kind in order}
    for i in range(repeat):
        say(f"preflight cost: {n} host(s), repeat {i + 1}/{repeat}")
        # Alternate the order so a drift in the machine's load does not favour one side.
        for kind in order if i % 2 == 0 else order[::-1]:
            if kind == "baseline":
                runs[kind].append(run_preflight(cluster, hosts, True, baseline))
            elif kind.startswith("preflight"):
                runs[kind].append(run_preflight(cluster, hosts, kind == "preflight"))
            else:
                runs[kind].append(run_horovodrun(cluster, hosts, kind == "horovodrun_nics"))
    return summarise(n, runs)


def summarise(n: int, runs: dict[str, list]) -> dict:
    pre = median(r.seconds for r in runs["preflight"])
    pre_no_mpi = median(r.seconds for r in runs["preflight_no_mpi"])
    hvd = median(runs["horovodrun"])
    hvd_nics = median(runs["horovodrun_nics"])
    # Each repeat ran both launches back to back: the median of the paired differences is
    # steadier than the difference of the medians.
    discovery = median(a - b for a, b in zip(runs["horovodrun"], runs["horovodrun_nics"]))
    stage_names = runs["preflight"][0].stages.keys()
    baseline = median(r.seconds for r in runs.get("baseline", []))
    return {
        "baseline_s": baseline,
        # Paired like discovery: each repeat ran both preflights back to back.
        "vs_baseline": median(a.seconds / b.seconds for a, b in zip(
            runs["preflight"], runs.get("baseline", []))),
        "hosts": n,
        "preflight_s": pre, "preflight_no_mpi_s": pre_no_mpi,
        "preflight_stages_s": {s: median(r.stages.get(s) for r in runs["preflight"])
                               for s in stage_names},
        "preflight_exit": [r.returncode for r in runs["preflight"]],
        "horovodrun_s": hvd, "horovodrun_nics_s": hvd_nics, "discovery_s": discovery,
        # One host is local to horovodrun, which then discovers nothing: no ratio to take.
        "ratio": ratio(pre, discovery) if n > 1 else None,
        "ratio_no_mpi": ratio(pre_no_mpi, discovery) if n > 1 else None,
        "runs": {"preflight_s": [round(r.seconds, 3) for r in runs["preflight"]],
                 "preflight_no_mpi_s": [round(r.seconds, 3) for r in runs["preflight_no_mpi"]],
                 "horovodrun_s": [round(s, 3) for s in runs["horovodrun"]],
                 "horovodrun_nics_s": [round(s, 3) for s in runs["horovodrun_nics"]]},
    }


def measure(cluster: Cluster, host_counts: Sequence[int], repeat: int, say: Say,
            baseline: Path | None = None) -> dict:
    rows = [measure_hosts(cluster, n, repeat, say, baseline) for n in host_counts]
    largest = rows[-1]
    target = None
    if largest["hosts"] > 1 and largest["discovery_s"] is not None:
        target = largest["preflight_s"] < largest["discovery_s"]
    return {"repeat": repeat, "rows": rows,
            "target": {"what": f"preflight (default checks) over {largest['hosts']} hosts "
                               "faster than horovodrun's interface discovery over the same",
                       "met": target,
                       "met_no_mpi": (largest["preflight_no_mpi_s"] < largest["discovery_s"]
                                      if target is not None else None)}}


def report(result: dict, console: Console) -> list:
    from rich.table import Table

    table = Table(title="Preflight against horovodrun's own interface discovery (median "
                        f"seconds of {result['repeat']} run(s))")
    for column in ("hosts", "preflight", "probe", "mesh+mtu", "mpi", "--no-mpi", "horovodrun",
                   "+nics", "discovery", "pf÷disc", "no-mpi÷disc"):
        table.add_column(column, justify="right")
    for row in result["rows"]:
        st = row["preflight_stages_s"]
        table.add_row(str(row["hosts"]), fmt(row["preflight_s"]),
                      *(fmt(st.get(s)) for s in ("probe", "mesh_mtu", "mpi")),
                      fmt(row["preflight_no_mpi_s"]), fmt(row["horovodrun_s"]),
                      fmt(row["horovodrun_nics_s"]), fmt(row["discovery_s"]),
                      fmt(row["ratio"], ".1f", "x"), fmt(row["ratio_no_mpi"], ".1f", "x"))
    table.caption = ("probe, mesh+mtu, mpi: the preflight's stages; +nics: horovodrun with "
                     "--network-interfaces; discovery: horovodrun minus +nics (one host is "
                     "local to horovodrun, which then discovers nothing)")
    console.print(table)
    t = result["target"]
    console.print(f"target: {t['what']}: {verdict(t['met'])} "
                  f"(with --no-mpi: {verdict(t['met_no_mpi'])})")
    if result.get("baseline"):
        console.print(f"against {result['baseline']} (same runs, paired): " + ", ".join(
            f"{r['hosts']} host(s) {fmt(r['baseline_s'])} s -> {fmt(r['preflight_s'])} s "
            f"({fmt(r['vs_baseline'], '.2f', 'x')})" for r in result["rows"]))
    return [table]


def plot(result: dict):
    fig, ax = new_figure("Preflight wall time vs horovodrun's own interface discovery")
    rows = result["rows"]
    hosts = [r["hosts"] for r in rows]
    for key, label, style in (("preflight_s", "preflight (default, with MPI)", "o-"),
                              ("preflight_no_mpi_s", "preflight --no-mpi", "s-"),
                              ("discovery_s", "horovodrun discovery (with - without "
                                              "--network-interfaces)", "^-"),
                              ("horovodrun_s", "horovodrun total, trivial job", "v--")):
        ax.plot(hosts, [r[key] for r in rows], style, label=label)
    ax.set_xlabel("hosts")
    ax.set_ylabel("seconds (median)")
    ax.set_xticks(hosts)
    ax.legend(fontsize=8)
    return save_figure(NAME, fig)


def run(cluster: Cluster, host_counts: Sequence[int], repeat: int, console: Console,
        say: Say, baseline_rev: str | None = None) -> dict:
    try:
        with worktree(baseline_rev) as baseline:
            result = {**measure(cluster, host_counts, repeat, say, baseline),
                      "baseline": baseline_rev}
    finally:
        for path in SCRATCH:
            path.unlink(missing_ok=True)
    report(result, console)
    paths = [write_json(NAME, result), plot(result)]
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return result
