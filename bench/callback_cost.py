"""What the template's callbacks cost per training step, before and after issue 12's changes,
side by side in one horovodrun -np 2 job on simulated host h1.

  before  the callbacks template/train.py had: Horovod's BroadcastGlobalVariablesCallback (it
          broadcasts inside the first batch), metric averaging, LR warm-up, the progress line and
          Keras' TensorBoard callback
  now     template/loop.callbacks(): the broadcast is done once before fit (loop.broadcast_model),
          TensorBoard scalars are written at epoch end (loop.EpochSummaries)

Each configuration trains a fresh model of template/model.py for EPOCHS epochs; every batch hook
of every callback is timed. TensorFlow warns when the hooks of the first batches take longer than
the batch itself, so the table gives the first 5 batches apart from the whole run.

`horovodrun -np 2 python bench/callback_cost.py worker` is the worker by itself.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from common import HOROVODRUN, PYTHON, ROOT, Cluster, Say, fmt, last_json_line, write_json

if TYPE_CHECKING:
    from rich.console import Console

NAME = "callback_cost"
TIMEOUT_S = 600
FIRST = 5  # the batches TensorFlow's slow-callback warning looks at
HOOKS = ("on_train_batch_begin", "on_train_batch_end")


def worker(epochs: int, out: Path) -> dict:
    sys.path.insert(0, str(ROOT / "template"))
    # isort: off
    import loop  # first: it sets TensorFlow's environment (tfenv) before importing it
    import horovod.tensorflow.keras as hvd
    import tensorflow as tf
    # isort: on
    import config

    cfg = config.load(["--epochs", str(epochs), "--out", str(out)])
    loop.start(cfg)
    data = loop.in_memory(cfg, hvd.rank(), hvd.size())
    result = {}
    for name in ("before", "now"):
        model = loop.compiled_model(cfg, hvd.size())
        run = loop.new_run_dir(str(out / name / str(hvd.rank())))
        progress = loop.ProgressLine(cfg.epochs, cfg.batch_size * hvd.size(),
                                     data.steps_per_epoch)
        if name == "before":
            callbacks = [hvd.callbacks.BroadcastGlobalVariablesCallback(0),
                         *loop.callbacks(cfg, hvd.size(), data.steps_per_epoch, None, progress),
                         progress, tf.keras.callbacks.TensorBoard(str(run / "tb"),
                                                                  profile_batch=0)]
        else:
            loop.broadcast_model(model)
            callbacks = loop.callbacks(cfg, hvd.size(), data.steps_per_epoch, run, progress)
        times = time_hooks(callbacks)
        started = time.perf_counter()
        model.fit(data.train, steps_per_epoch=data.steps_per_epoch, epochs=cfg.epochs,
                  validation_data=data.val, callbacks=callbacks, verbose=0)
        seconds = time.perf_counter() - started
        batches = per_batch(times, len(callbacks) * len(HOOKS))
        result[name] = {
            "hooks_ms_first": round(1e3 * sum(batches[:FIRST]) / FIRST, 3),
            "hooks_ms_mean": round(1e3 * sum(batches) / len(batches), 3),
            "fit_ms_per_batch": round(1e3 * seconds / len(batches), 3),
            "batches": len(batches)}
    return result


def time_hooks(callbacks: list) -> list[float]:
    """Wraps every callback's batch hooks; returns the list their durations go to, in call
    order (per_batch() sums them per batch: each batch calls every hook once)."""
    times: list[float] = []

    def wrapped(inner):
        def timed(batch, logs=None):
            started = time.perf_counter()
            inner(batch, logs)
            times.append(time.perf_counter() - started)
        return timed

    for callback in callbacks:
        for hook in HOOKS:
            setattr(callback, hook, wrapped(getattr(callback, hook)))
    return times


def per_batch(times: list[float], hooks_per_batch: int) -> list[float]:
    return [sum(times[i:i + hooks_per_batch]) for i in range(0, len(times), hooks_per_batch)]


# --- running it ------------------------------------------------------------------------------

def measure(cluster: Cluster, epochs: int, say: Say) -> dict:
    say(f"callback cost: horovodrun -np 2 on h1, before and now, {epochs} epochs each")
    with tempfile.TemporaryDirectory(prefix=f"{NAME}-") as tmp:
        argv = [HOROVODRUN, "-np", "2", "-H", "h1:2", PYTHON, str(Path(__file__).resolve()),
                "worker", "--epochs", str(epochs), "--out", tmp]
        result = cluster.run("h1", argv, TIMEOUT_S)
    if not result.ok:
        raise RuntimeError(f"callback cost failed: {result.why()}")
    return {"epochs": epochs, "ranks": 2, "rank0": last_json_line(result.stdout)}


def report(result: dict, console: Console) -> None:
    from rich.table import Table

    table = Table(title=f"Batch-hook cost of the template's callbacks, rank 0 of 2 "
                        f"({result['epochs']} epochs)")
    for column in ("callbacks", f"hooks, first {FIRST} batches", "hooks, all batches",
                   "fit, per batch"):
        table.add_column(column, justify="left" if column == "callbacks" else "right")
    for name, row in result["rank0"].items():
        table.add_row(name, fmt(row["hooks_ms_first"], ".2f", " ms"),
                      fmt(row["hooks_ms_mean"], ".3f", " ms"),
                      fmt(row["fit_ms_per_batch"], ".2f", " ms"))
    console.print(table)


def run(cluster: Cluster, epochs: int, console: Console, say: Say) -> dict:
    result = measure(cluster, epochs, say)
    report(result, console)
    console.print(f"wrote {write_json(NAME, result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The worker of the callback-cost benchmark "
                                                 "(under horovodrun).")
    parser.add_argument("mode", choices=["worker"])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    result = worker(args.epochs, args.out)
    import horovod.tensorflow.keras as hvd
    if hvd.rank() == 0:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
