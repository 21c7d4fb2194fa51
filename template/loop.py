"""The pieces of the training loop around model.fit: run directory, checkpoints, progress, metrics.

Everything that writes is meant for rank 0 alone; train.py decides who calls what.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from datetime import datetime
from pathlib import Path

import tensorflow as tf

CHECKPOINT_RE = re.compile(r"epoch-(\d+)\.h5$")
KEEP_CHECKPOINTS = 2


def threads_per_process(local_size: int) -> int:
    """Cores of this host shared among the processes on it, so they do not fight over cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_size))


def new_run_dir(out: str) -> Path:
    run = Path(out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while run.exists():  # two runs in the same second
        run = run.with_name(f"{run.name.split('.')[0]}.{suffix}")
        suffix += 1
    (run / "checkpoints").mkdir(parents=True)
    return run


def last_checkpoint(run: Path) -> tuple[Path, int] | None:
    """The newest checkpoint of a run and the number of epochs it completed."""
    found = [(int(m.group(1)), p) for p in (run / "checkpoints").glob("epoch-*.h5")
             if (m := CHECKPOINT_RE.search(p.name))]
    if not found:
        return None
    epoch, path = max(found)
    return path, epoch


class AtomicCheckpoint(tf.keras.callbacks.Callback):
    """Saves model and optimizer after each epoch via a temporary file and a rename: a process
    killed mid-write leaves the previous checkpoint intact."""

    def __init__(self, run: Path) -> None:
        super().__init__()
        self.dir = run / "checkpoints"

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        fd, tmp = tempfile.mkstemp(suffix=".h5", dir=self.dir)
        os.close(fd)
        self.model.save(tmp, include_optimizer=True)
        os.replace(tmp, self.dir / f"epoch-{epoch + 1:03d}.h5")
        for old in sorted(self.dir.glob("epoch-*.h5"))[:-KEEP_CHECKPOINTS]:
            old.unlink()


class ProgressLine(tf.keras.callbacks.Callback):
    """One line per epoch (from rank 0): loss, accuracy, samples/s over all ranks, time left."""

    def __init__(self, epochs: int, global_batch: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.samples_per_epoch = global_batch * steps_per_epoch
        self.rates: list[float] = []
        self.last: dict = {}

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        self.rates.append(self.samples_per_epoch / seconds)
        self.last = dict(logs or {})
        left = (self.epochs - epoch - 1) * seconds
        print(f"epoch {epoch + 1:>3}/{self.epochs}  loss {self.last.get('loss', 0):.4f}  "
              f"acc {self.last.get('accuracy', 0):.4f}  val_loss {self.last.get('val_loss', 0):.4f}"
              f"  val_acc {self.last.get('val_accuracy', 0):.4f}  "
              f"{self.rates[-1]:,.0f} samples/s  {left:.0f}s left", flush=True)

    def samples_per_second(self) -> float:
        """Steady-state rate: the first epoch pays for graph tracing, so it is left out."""
        steady = self.rates[1:] or self.rates
        return sum(steady) / len(steady) if steady else 0.0


def write_metrics(run: Path, progress: ProgressLine, rank_hosts: list[str], epochs: int,
                  initial_epoch: int) -> Path:
    metrics = {
        "val_accuracy": float(progress.last.get("val_accuracy", 0.0)),
        "val_loss": float(progress.last.get("val_loss", 0.0)),
        "accuracy": float(progress.last.get("accuracy", 0.0)),
        "loss": float(progress.last.get("loss", 0.0)),
        "samples_per_second": round(progress.samples_per_second(), 1),
        "world_size": len(rank_hosts),
        "rank_hosts": rank_hosts,
        "epochs": epochs,
        "initial_epoch": initial_epoch,
    }
    path = run / "metrics.json"
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    return path
