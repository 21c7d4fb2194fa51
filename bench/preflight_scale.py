"""What the preflight costs per phase as hosts grow, and a model of 1,000 hosts.

The preflight runs from h1 over the first N hosts for each N (16, 32, 64, 100 by default),
plain and with --bandwidth. Its report has, per phase, the wall seconds and the launcher's CPU
seconds (scripts/preflight/cost.py: this process, its ssh clients and masters, mpirun).

The model. On this machine every simulated host shares the same 2 cores, so a phase's wall
time grows with N even where the design keeps each host's work fixed. A straight line fitted
per phase, wall(N) = a + b N, splits it: b is the CPU all parties spend per host, shared by
CORES cores, so a host's own work is r = CORES b - c, with c the launcher's CPU per host
(measured). On a real cluster the hosts work side by side: a phase costs its fixed part a, one
host's own work r, and the launcher's part c N, which stays on one machine. The probe is also
bounded by its window: at most WINDOW hosts at once, each taking r. So
    model(N) = a + max(r, c N / LAUNCHER_CORES, ceil(N / WINDOW) r).
The pairwise phases run a fixed number of rounds beyond 16 hosts (the ring and 6 matchings),
which is what lets a and r stay flat; the MPI pair rounds' time is taken as measured at the
largest N (an upper bound: there every pair shared the 2 cores with all the others).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import preflight_cost
from common import Cluster, Say, fmt, new_figure, save_figure, write_json

if TYPE_CHECKING:
    from rich.console import Console

NAME = "preflight_scale"
HOSTS = (16, 32, 64, 100)
MODEL_HOSTS = 1000
CORES = 2  # this machine's, shared by every simulated host
LAUNCHER_CORES = 1  # the launcher's Python is one thread's worth; a conservative bound
WINDOW = 256  # fanout: probes at once at most
PHASES = ("inventory", "probe", "checks", "mesh", "mpi")
MPI_SPLIT = ("launch_s", "pairs_s", "collectives_s")


def measure(cluster: Cluster, host_counts: Sequence[int], say: Say) -> list[dict]:
    rows = []
    for n in host_counts:
        for bandwidth in (False, True):
            say(f"preflight scale: {n} hosts{' --bandwidth' if bandwidth else ''}")
            run = preflight_cost.run_preflight(cluster, cluster.hosts(n), True,
                                               extra=["--bandwidth"] if bandwidth else [])
            phases = run.report.get("phases", {})
            kept = sum(1 for h in run.report.get("hosts", []) if h.get("ok"))
            rows.append({"hosts": n, "bandwidth": bandwidth, "seconds": round(run.seconds, 2),
                         "kept": kept, "exit": run.returncode, "phases": phases,
                         "report_s": round(run.seconds - sum(
                             p.get("wall_s", 0.0) for p in phases.values()), 2)})
    return rows


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least squares a + b x; (a, b)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    b = sum((x - mean_x) * (y - mean_y) for x, y in points) / spread if spread else 0.0
    return mean_y - b * mean_x, b


def phase_model(rows: list[dict], phase: str, bandwidth: bool) -> dict:
    mine = [r for r in rows if r["bandwidth"] == bandwidth and phase in r["phases"]]
    if len(mine) < 2:
        return {}
    a, b = fit([(r["hosts"], r["phases"][phase]["wall_s"]) for r in mine])
    largest = max(mine, key=lambda r: r["hosts"])
    c = largest["phases"][phase]["launcher_cpu_s"] / largest["hosts"]
    r = max(0.0, CORES * b - c)
    a = max(0.0, a)
    if phase == "mpi":  # its pair rounds are as many at 1,000 hosts as at 100: their time as
        a = max(a, largest["phases"]["mpi"].get("pairs_s", 0.0))  # measured, shared cores and all
    return {"fixed_s": round(a, 3), "per_host_all_s": round(b, 4), "launcher_cpu_per_host_s":
            round(c, 4), "host_work_s": round(r, 3)}


def predict(model: dict, phase: str, hosts: int) -> float:
    if not model:
        return 0.0
    a, r, c = model["fixed_s"], model["host_work_s"], model["launcher_cpu_per_host_s"]
    waves = math.ceil(hosts / WINDOW) * r if phase == "probe" else r
    return a + max(r, c * hosts / LAUNCHER_CORES, waves)


def models(rows: list[dict]) -> dict:
    out = {}
    for bandwidth in (False, True):
        key = "bandwidth" if bandwidth else "plain"
        per_phase = {p: phase_model(rows, p, bandwidth) for p in PHASES}
        report_s = [r["report_s"] for r in rows if r["bandwidth"] == bandwidth]
        tail = max(report_s) if report_s else 0.0  # start-up, report, exit: taken as flat
        out[key] = {"phases": per_phase, "start_and_report_s": tail,
                    "predicted_s": {n: round(tail + sum(predict(per_phase[p], p, n)
                                                        for p in PHASES), 1)
                                    for n in (*sorted({r["hosts"] for r in rows}), MODEL_HOSTS)}}
    return out


def report(rows: list[dict], model: dict, console: Console) -> None:
    from rich.table import Table

    table = Table(title="Preflight per phase (wall s / launcher CPU s), one run each")
    for column in ("hosts", "mode", "total", "kept", *PHASES, "mpi launch", "mpi pairs"):
        table.add_column(column, justify="right")
    for row in rows:
        ph = row["phases"]
        cells = [f"{fmt(ph[p]['wall_s'], '.1f')} / {fmt(ph[p]['launcher_cpu_s'], '.1f')}"
                 if p in ph else "-" for p in PHASES]
        mpi = ph.get("mpi", {})
        table.add_row(str(row["hosts"]), "bandwidth" if row["bandwidth"] else "plain",
                      fmt(row["seconds"], ".1f"), str(row["kept"]), *cells,
                      fmt(mpi.get("launch_s"), ".1f"), fmt(mpi.get("pairs_s"), ".1f"))
    console.print(table)
    for key, m in model.items():
        console.print(f"model ({key}): " + ", ".join(
            f"{n} hosts {s} s" for n, s in m["predicted_s"].items()))


def markdown(rows: list[dict], model: dict) -> str:
    """The table and the model as the README shows them."""
    lines = ["| hosts | mode | total | kept | probe | mesh | MPI (launch + pairs) | launcher CPU "
             "per host |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        ph = row["phases"]
        mpi = ph.get("mpi", {})
        cpu = sum(p.get("launcher_cpu_s", 0.0) for p in ph.values()) / row["hosts"]
        lines.append(
            f"| {row['hosts']} | {'--bandwidth' if row['bandwidth'] else 'plain'} | "
            f"{row['seconds']:.1f} | {row['kept']} | {ph.get('probe', {}).get('wall_s', 0):.1f} | "
            f"{ph.get('mesh', {}).get('wall_s', 0):.1f} | {mpi.get('wall_s', 0):.1f} "
            f"({mpi.get('launch_s', 0):.1f} + {mpi.get('pairs_s', 0):.1f}) | {cpu:.3f} s |")
    for key, m in model.items():
        lines.append("")
        lines.append(f"Model, {key}: " + ", ".join(f"{n} hosts {v:.0f} s"
                                                   for n, v in m["predicted_s"].items()))
    return "\n".join(lines)


def plot(rows: list[dict], model: dict):
    fig, ax = new_figure("Preflight wall time: measured here, and the model to 1,000 hosts")
    for key, style in (("plain", "o"), ("bandwidth", "s")):
        mine = [r for r in rows if r["bandwidth"] == (key == "bandwidth")]
        ax.plot([r["hosts"] for r in mine], [r["seconds"] for r in mine], style,
                label=f"measured, {key} (2 shared cores)")
        predicted = model[key]["predicted_s"]
        ax.plot(list(predicted), list(predicted.values()), "--",
                label=f"model, {key} (hosts on their own cores)")
    ax.set_xscale("log")
    ax.set_xlabel("hosts")
    ax.set_ylabel("seconds")
    ax.legend(fontsize=8)
    return save_figure(NAME, fig)


def run(cluster: Cluster, host_counts: Sequence[int], console: Console, say: Say) -> dict:
    rows = measure(cluster, host_counts, say)
    model = models(rows)
    report(rows, model, console)
    result = {"rows": rows, "model": model, "cores": CORES, "window": WINDOW}
    console.print(markdown(rows, model), markup=False, highlight=False)
    paths = [write_json(NAME, result), plot(rows, model)]
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return result
