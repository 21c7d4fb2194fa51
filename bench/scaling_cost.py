"""Does the scaling prediction hold? Predicted against measured step time on throttled links.

The simulated hosts' links are throttled (simcluster's `rate` fault: tc tbf on each host's
link) to each RATE; the preflight with --bandwidth measures them, as a user's would. Then a
model with a few MB of gradients (an MLP, PARAMETERS float32 parameters) trains STEPS steps
under horovodrun on 1, 2, 3, 4 hosts, plain, with fp16 compression, and with accumulation over
ACCUMULATE batches. Each run times its own compute per step first (template/loop.py's
compute_seconds, every rank at once), then its steps; preflight.scaling predicts the step time
from the compute time, the gradient bytes and the preflight's slowest link, as make train does.

`horovodrun -np N python bench/scaling_cost.py worker ...` is the worker by itself.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    HOROVODRUN,
    IFACE,
    MPI_TRANSPORT,
    PYTHON,
    ROOT,
    Cluster,
    Say,
    fmt,
    host_list,
    last_json_line,
    new_figure,
    save_figure,
    write_json,
)

from preflight import scaling
from preflight.launch.command import RING_ALLREDUCE

if TYPE_CHECKING:
    from rich.console import Console

NAME = "scaling"
RATES = ("1gbit", "100mbit")
HOSTS = (1, 2, 3, 4)
MODES = ("plain", "fp16", "accumulate")
ACCUMULATE = 4
WIDTH = 512  # the MLP's hidden width: 784*512 + 512*512 + 512*10 + biases: 0.67 M parameters
# Steps after the first (which traces): a whole number of accumulation cycles.
STEPS, QUICK_STEPS = 1 + 4 * ACCUMULATE, 1 + 2 * ACCUMULATE
BATCH = 32
TIMEOUT_S = 300


# --- the worker (under horovodrun) -----------------------------------------------------------

def worker(mode: str, steps: int) -> dict:
    sys.path.insert(0, str(ROOT / "template"))
    # isort: off
    import loop  # first: it sets TensorFlow's environment (tfenv) before importing it
    import horovod.tensorflow.keras as hvd
    import numpy as np
    import tensorflow as tf
    # isort: on
    import config

    flags = {"plain": [], "fp16": ["--fp16-allreduce"],
             "accumulate": ["--accumulate", str(ACCUMULATE)]}[mode]
    cfg = config.load(["--batch-size", str(BATCH), *flags])
    loop.start(cfg)
    model = tf.keras.Sequential([
        tf.keras.layers.Input((784,)), tf.keras.layers.Dense(WIDTH, activation="relu"),
        tf.keras.layers.Dense(WIDTH, activation="relu"), tf.keras.layers.Dense(10)])
    model.compile(optimizer=loop.distributed_optimizer(cfg, hvd.size()),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(hvd.rank())
    data = tf.data.Dataset.from_tensor_slices(
        (rng.random((BATCH * 8, 784), dtype=np.float32), rng.integers(0, 10, BATCH * 8))
    ).repeat().batch(BATCH)
    compute = loop.compute_seconds(model, data)
    loop.broadcast_model(model)
    ends: list[float] = []
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, callbacks=[
        tf.keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda batch, logs: ends.append(time.perf_counter()))])
    gaps = [b - a for a, b in zip(ends, ends[1:])]  # the first step traces: left out
    # The mean: under accumulation one step in ACCUMULATE carries the allreduce.
    return {"compute_s": compute, "step_s": statistics.mean(gaps),
            "parameters": model.count_params(), "ranks": hvd.size()}


# --- the driver ------------------------------------------------------------------------------

def worker_argv(hosts: Sequence[str], mode: str, steps: int) -> list[str]:
    # One host crosses no network: horovodrun then looks for the interface of 127.0.0.1 and
    # refuses eth0.
    # make train's MPI settings: the ring allreduce (preflight.launch.command).
    mpi = " ".join(RING_ALLREDUCE)
    network = ["--network-interfaces", IFACE, f"--mpi-args=--mca oob_tcp_if_include "
               f"{MPI_TRANSPORT[-1]} {mpi}"] if len(hosts) > 1 else []
    return [HOROVODRUN, "--disable-cache", "-np", str(len(hosts)), "-H", host_list(hosts),
            *network, PYTHON, str(Path(__file__).resolve()), "worker", "--mode", mode,
            "--steps", str(steps)]


def measure_links(cluster: Cluster, hosts: Sequence[str]) -> dict:
    """The preflight's matrices for these hosts, measured with --bandwidth, as a user's."""
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        report = Path(tmp) / "pf.json"
        ran = cluster.run("h1", [PYTHON, "-m", "preflight", "--hosts", ",".join(hosts),
                                 "--bandwidth", "--report", str(report), "--hostfile",
                                 str(Path(tmp) / "hostfile"), "--quiet"], TIMEOUT_S)
        if not report.exists():
            raise RuntimeError(f"preflight --bandwidth failed: {ran.why()}")
        return json.loads(report.read_text())["matrices"]


def measure(cluster: Cluster, rates: Sequence[str], steps: int, say: Say) -> dict:
    all_hosts = cluster.hosts(max(HOSTS))
    rows = []
    for rate in rates:
        for host in all_hosts:
            cluster.sim.set_fault(host, "rate", "on", rate)
        try:
            say(f"scaling: links at {rate}: preflight --bandwidth")
            matrices = measure_links(cluster, all_hosts)
            for n in HOSTS:
                for mode in MODES if n > 1 else ("plain",):
                    say(f"scaling: {rate}, {n} host(s), {mode}")
                    rows.append(run_one(cluster, all_hosts[:n], mode, steps, rate, matrices))
        finally:
            for host in all_hosts:
                cluster.sim.set_fault(host, "rate", "off")
    return {"steps": steps, "batch": BATCH, "accumulate": ACCUMULATE, "rows": rows}


def run_one(cluster: Cluster, hosts: Sequence[str], mode: str, steps: int, rate: str,
            matrices: dict) -> dict:
    ran = cluster.run("h1", worker_argv(hosts, mode, steps), TIMEOUT_S)
    if not ran.ok:
        raise RuntimeError(f"{mode} on {len(hosts)} hosts failed: {ran.why()}")
    got = last_json_line(ran.stdout)
    work = scaling.Workload(got["compute_s"], got["parameters"], BATCH, 1, mode == "fp16",
                            ACCUMULATE if mode == "accumulate" else 1)
    point = scaling.predict(scaling.ring(list(hosts), matrices), work)
    return {"rate": rate, "hosts": len(hosts), "mode": mode, "compute_ms": got["compute_s"] * 1e3,
            "measured_ms": got["step_s"] * 1e3, "predicted_ms": point.step_s * 1e3,
            "predicted_comm_share": point.comm_share,
            "error": point.step_s / got["step_s"] - 1, "gradient_MB": work.gradient_bytes / 1e6}


def fp16_gains(rows: list[dict]) -> list[dict]:
    """fp16's speed-up over plain, measured and predicted, per rate and host count."""
    by = {(r["rate"], r["hosts"], r["mode"]): r for r in rows}
    gains = []
    for (rate, hosts, mode), row in by.items():
        plain = by.get((rate, hosts, "plain"))
        if mode == "fp16" and plain:
            measured = plain["measured_ms"] / row["measured_ms"]
            predicted = plain["predicted_ms"] / row["predicted_ms"]
            gains.append({"rate": rate, "hosts": hosts, "measured": measured,
                          "predicted": predicted, "error": predicted / measured - 1})
    return gains


def report(result: dict, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"Step time on throttled links: predicted against measured (MLP, "
                        f"{result['rows'][0]['gradient_MB']:.1f} MB of float32 gradients, batch "
                        f"{result['batch']} per rank, mean of {result['steps'] - 1} steps)")
    for column in ("links", "hosts", "mode", "compute", "predicted", "measured", "error",
                   "comm share"):
        table.add_column(column, justify="left" if column in ("links", "mode") else "right")
    for r in result["rows"]:
        table.add_row(r["rate"], str(r["hosts"]), r["mode"], fmt(r["compute_ms"], ".1f", " ms"),
                      fmt(r["predicted_ms"], ".1f", " ms"), fmt(r["measured_ms"], ".1f", " ms"),
                      f"{r['error']:+.0%}", f"{r['predicted_comm_share']:.0%}")
    console.print(table)
    for g in result["fp16_gains"]:
        console.print(f"fp16 at {g['rate']}, {g['hosts']} hosts: measured {g['measured']:.2f}x, "
                      f"predicted {g['predicted']:.2f}x ({g['error']:+.0%})")
    dominated = [r for r in result["rows"] if r["hosts"] > 1 and r["mode"] == "plain"
                 and r["predicted_comm_share"] > scaling.COMM_DOMINATES]
    within = [abs(r["error"]) <= 0.25 for r in dominated]
    console.print(f"target: predicted step time within 25% where communication dominates: "
                  f"{sum(within)} of {len(within)} runs")


def plot(result: dict) -> Path:
    fig, ax = new_figure("Samples/s against hosts on throttled links: predicted and measured")
    for rate in dict.fromkeys(r["rate"] for r in result["rows"]):
        for mode, style in (("plain", "o"), ("fp16", "s")):
            rows = [r for r in result["rows"] if r["rate"] == rate
                    and (r["mode"] == mode or r["hosts"] == 1)]
            hosts = [r["hosts"] for r in rows]
            per_step = [r["hosts"] * result["batch"] for r in rows]
            line, = ax.plot(hosts, [s / (r["measured_ms"] / 1e3) for s, r in zip(per_step, rows)],
                            style + "-", label=f"{rate} {mode}, measured")
            ax.plot(hosts, [s / (r["predicted_ms"] / 1e3) for s, r in zip(per_step, rows)],
                    style + ":", color=line.get_color(), label=f"{rate} {mode}, predicted")
    ax.set_xlabel("hosts (one rank each)")
    ax.set_ylabel("samples/s, all ranks")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    return save_figure(NAME, fig)


def run(cluster: Cluster, quick: bool, console: Console, say: Say) -> dict:
    result = measure(cluster, RATES[-1:] if quick else RATES, QUICK_STEPS if quick else STEPS,
                     say)
    result["fp16_gains"] = fp16_gains(result["rows"])
    report(result, console)
    paths = [write_json(NAME, result), plot(result)]
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The worker of the scaling benchmark.")
    parser.add_argument("mode", choices=["worker"])
    parser.add_argument("--mode", dest="train_mode", choices=MODES, default="plain")
    parser.add_argument("--steps", type=int, default=STEPS)
    args = parser.parse_args(argv)
    result = worker(args.train_mode, args.steps)
    import horovod.tensorflow.keras as hvd
    if hvd.rank() == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
