"""What Horovod costs per training step: the template's samples/s under horovodrun against the
same model trained by plain Keras, and two processes on one host against one.

Four configurations, all on simulated host h1 (its cores are the machine's):
  keras        this file's `plain` runner: template/model.py and template/data.py trained as
               template/train.py trains them (same data pipeline, optimizer, batch, steps per
               epoch, validation, the same rank-0 callbacks for progress, checkpoints and
               TensorBoard, and the same thread settings as one process gets there), no Horovod
  hvd np=1     horovodrun -np 1 template/train.py
  hvd np=2     horovodrun -np 2 template/train.py on the same host: each process gets
               cores // 2 intra-op threads and one inter-op thread (template/loop.py)
  np=2 no pin  the same, from a copy of template/ whose loop.py leaves TensorFlow's thread pools
               at their defaults (every process sizes them for all cores); template/ has
               no switch for this, and this benchmark does not edit it
Every rate comes from the template's own progress line (loop.ProgressLine: the samples of all
processes over the epoch's wall time, validation included): a run's figure is the median over its
epochs but the first (graph tracing), a configuration's the median over the repeats, which run
interleaved. metrics.json's figure (the mean over the same epochs) is kept in the JSON beside it.

`python bench/step_cost.py plain --epochs N --out DIR` is the plain-Keras runner by itself.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from common import (
    HOROVODRUN,
    PYTHON,
    ROOT,
    Cluster,
    Say,
    fmt,
    median,
    new_figure,
    ratio,
    save_figure,
    verdict,
    write_json,
)

if TYPE_CHECKING:
    from rich.console import Console

NAME = "step_cost"
TEMPLATE = ROOT / "template"
TIMEOUT_S = 600
# ProgressLine's line per epoch: "epoch   2/30  loss ...  6,512 samples/s  3s left".
EPOCH_RATE = re.compile(r"epoch +\d+/\d+ .*? ([\d,.]+) samples/s")
# The lines of template/loop.py that size TensorFlow's thread pools per process; the 'no pin'
# configuration runs a copy of the template without them.
THREAD_LINES = ("    tf.config.threading.set_intra_op_parallelism_threads(threads)\n"
                "    tf.config.threading.set_inter_op_parallelism_threads(1)\n")
CONFIGS = ("keras", "hvd_np1", "hvd_np2", "hvd_np2_nopin")
LABELS = {"keras": "plain Keras, 1 process", "hvd_np1": "horovodrun -np 1",
          "hvd_np2": "horovodrun -np 2 (threads pinned)",
          "hvd_np2_nopin": "horovodrun -np 2 (TF default threads)"}
HVD_NP1_TARGET = 0.95  # Horovod at -np 1 within 5% of plain Keras
NP2_TARGET = 0.9  # two processes on two cores: at least 0.9 of one process's samples/s


# --- the plain-Keras runner ----------------------------------------------------------------------

def plain(argv: list[str]) -> int:
    """template/train.py's single-process path with every Horovod line taken out: the same
    model, data pipeline, optimizer, batch, steps and rank-0 callbacks (template/loop.py)."""
    sys.path.insert(0, str(TEMPLATE))
    # isort: off
    import loop  # first: it sets TensorFlow's environment (tfenv) before importing it
    import tensorflow as tf
    # isort: on
    import config as config_module
    import model as model_module

    cfg = config_module.load(argv)
    threads = loop.threads_per_process(1)  # what the template gives a lone process
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.keras.utils.set_random_seed(cfg.seed)

    data = loop.in_memory(cfg, 0, 1)
    model = model_module.build()
    model.compile(optimizer=tf.keras.optimizers.Adam(cfg.lr), loss=model_module.loss(),
                  metrics=model_module.metrics())
    run = loop.new_run_dir(cfg.out)
    progress = loop.ProgressLine(cfg.epochs, cfg.batch_size, data.steps_per_epoch)
    callbacks = [progress, loop.Checkpoints(run, progress),
                 loop.EpochSummaries(run / "tensorboard")]
    model.fit(data.train, steps_per_epoch=data.steps_per_epoch, epochs=cfg.epochs,
              validation_data=data.val, callbacks=callbacks, verbose=0)
    loop.finish(run, model, progress, cfg, 0, [socket.gethostname()], [[]])
    print(json.dumps({"metrics": str(run / "metrics.json"), "threads": threads}), flush=True)
    return 0


# --- running the configurations ------------------------------------------------------------------

def unpinned_template(into: Path) -> Path:
    """A copy of template/ whose loop.py leaves TensorFlow's thread pools at their defaults;
    returns its train.py."""
    copy = into / "template"
    shutil.copytree(TEMPLATE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    helpers = copy / "loop.py"
    text = helpers.read_text()
    if THREAD_LINES not in text:
        raise RuntimeError("template/loop.py no longer has the two thread-setting lines this "
                           "benchmark removes for 'no pin'; update THREAD_LINES in "
                           "bench/step_cost.py")
    helpers.write_text(text.replace(THREAD_LINES, "    pass  # bench: TF's default pools\n"))
    return copy / "train.py"


def config_argv(config: str, epochs: int, out: Path, unpinned: Path) -> list[str]:
    train = ["--epochs", str(epochs), "--out", str(out)]
    if config == "keras":
        return [PYTHON, str(Path(__file__).resolve()), "plain", *train]
    np = 1 if config == "hvd_np1" else 2
    script = unpinned if config == "hvd_np2_nopin" else TEMPLATE / "train.py"
    return [HOROVODRUN, "-np", str(np), "-H", f"h1:{np}", PYTHON, str(script), *train]


@dataclass(frozen=True)
class Rate:
    """One run's samples/s: the median of its epochs' rates, and the template's metrics.json
    figure (their mean), both without the first epoch."""

    median: float
    mean: float


def run_config(cluster: Cluster, config: str, epochs: int, work: Path, unpinned: Path,
               env: dict[str, str]) -> Rate:
    """One training run, its rate from the progress lines and metrics.json it writes."""
    out = Path(tempfile.mkdtemp(prefix=f"{config}-", dir=work))
    result = cluster.run("h1", config_argv(config, epochs, out, unpinned), TIMEOUT_S, env)
    found = sorted(out.glob("*/metrics.json"))
    rates = [float(m.group(1).replace(",", "")) for m in EPOCH_RATE.finditer(result.stdout)]
    if not result.ok or not found or len(rates) != epochs:
        raise RuntimeError(f"{config} failed: {result.why()}")
    # The median of the epochs: other work on the machine slows a few epochs, not the run.
    return Rate(statistics.median(rates[1:]),
                json.loads(found[-1].read_text())["samples_per_second"])


def measure(cluster: Cluster, epochs: int, repeat: int, say: Say,
            env: dict[str, str] | None = None, configs: Sequence[str] = CONFIGS) -> dict:
    runs: dict[str, list[Rate]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        work = Path(tmp)
        unpinned = unpinned_template(work)
        for i in range(repeat):
            # Interleaved, and in the other order every other repeat, so that a change in the
            # machine's load lands on every configuration alike.
            for config in configs if i % 2 == 0 else configs[::-1]:
                say(f"step cost: {LABELS[config]}, repeat {i + 1}/{repeat}")
                runs[config].append(run_config(cluster, config, epochs, work, unpinned,
                                               env or {}))
    return summarise(runs, epochs, repeat, env or {})


def summarise(runs: dict[str, list[Rate]], epochs: int, repeat: int,
              env: dict[str, str]) -> dict:
    rates = {c: median(r.median for r in v) for c, v in runs.items()}
    hvd1 = ratio(rates.get("hvd_np1"), rates.get("keras"))
    np2 = ratio(rates.get("hvd_np2"), rates.get("hvd_np1"))
    nopin = ratio(rates.get("hvd_np2_nopin"), rates.get("hvd_np1"))
    return {
        "epochs": epochs, "repeat": repeat, "env": env,
        "samples_per_second": rates,
        "runs": {c: [round(r.median, 1) for r in v] for c, v in runs.items()},
        "runs_metrics_json_mean": {c: [r.mean for r in v] for c, v in runs.items()},
        "ratios": {"hvd_np1_vs_keras": hvd1, "hvd_np2_vs_np1": np2,
                   "hvd_np2_nopin_vs_np1": nopin},
        "targets": {
            "hvd_np1_within_5pct_of_keras": None if hvd1 is None else hvd1 >= HVD_NP1_TARGET,
            "np2_at_least_0.9_of_np1": None if np2 is None else np2 >= NP2_TARGET},
    }


def report(result: dict, console: Console) -> list:
    from rich.table import Table

    table = Table(title=f"Per-step cost of Horovod on one host ({result['epochs']} epochs, "
                        f"median of {result['repeat']} run(s))")
    for column in ("configuration", "samples/s", "runs", "ratio", "against"):
        table.add_column(column, justify="left" if column == "configuration" else "right")
    against = {"hvd_np1": ("hvd_np1_vs_keras", "plain Keras"),
               "hvd_np2": ("hvd_np2_vs_np1", "-np 1"),
               "hvd_np2_nopin": ("hvd_np2_nopin_vs_np1", "-np 1")}
    for config, rate in result["samples_per_second"].items():
        key, name = against.get(config, (None, ""))
        table.add_row(LABELS[config], fmt(rate, ",.0f"),
                      " ".join(f"{r:,.0f}" for r in result["runs"][config]),
                      fmt(result["ratios"].get(key) if key else None, ".3f"), name)
    console.print(table)
    t = result["targets"]
    console.print(f"target: horovodrun -np 1 within 5% of plain Keras: "
                  f"{verdict(t['hvd_np1_within_5pct_of_keras'])}; 2 processes on "
                  f"{cores()} cores at least 0.9 of one: {verdict(t['np2_at_least_0.9_of_np1'])}")
    return [table]


def cores() -> int:
    import os

    return len(os.sched_getaffinity(0))


def plot(result: dict):
    fig, ax = new_figure("Training throughput on one host: plain Keras vs Horovod")
    configs = list(result["samples_per_second"])
    rates = [result["samples_per_second"][c] or 0 for c in configs]
    ax.bar(range(len(configs)), rates, color=["#888", "#1f77b4", "#2ca02c", "#d62728"])
    for i, config in enumerate(configs):  # each run as a dot: the spread is part of the figure
        ax.plot([i] * len(result["runs"][config]), result["runs"][config], "k.")
    ax.set_xticks(range(len(configs)), [LABELS[c].replace(" (", "\n(") for c in configs],
                  fontsize=8)
    ax.set_ylabel("samples/s (all processes)")
    return save_figure(NAME, fig)


def run(cluster: Cluster, epochs: int, repeat: int, console: Console,
        say: Say) -> dict:
    result = measure(cluster, epochs, repeat, say)
    report(result, console)
    paths = [write_json(NAME, result), plot(result)]
    console.print("wrote " + ", ".join(str(p) for p in paths))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The plain-Keras runner of the step-cost "
                                                 "benchmark: template/train.py without Horovod.")
    parser.add_argument("mode", choices=["plain"])
    args, rest = parser.parse_known_args(argv)
    return plain(rest)


if __name__ == "__main__":
    sys.exit(main())
