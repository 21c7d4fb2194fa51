"""What train.py and train_elastic.py share: process set-up, the data each rank reads, the
compiled model, callbacks, checkpoints and the run's record. Everything that writes is meant for
rank 0 alone; the entry files decide who calls what. You rarely need to change this file.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

# isort: off
import tfenv  # noqa: F401  (before TensorFlow)
import horovod.tensorflow.keras as hvd  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from horovod.tensorflow import allgather_object, broadcast_variables  # noqa: E402
# isort: on

import data  # noqa: E402
import model as model_module  # noqa: E402
import records  # noqa: E402
from config import Config  # noqa: E402

CHECKPOINT_RE = re.compile(r"epoch-(\d+)\.keras$")
KEEP_CHECKPOINTS = 2
SAMPLE_SIZE = 1024  # training inputs model.build() sees
HOROVOD_SHUT_DOWN = "Horovod has been shut down"  # another rank stopped: it says why


def start(cfg: Config) -> int:
    """hvd.init() and this process's share of the host: threads, one GPU, precision, seed.
    Returns the intra-op threads it got."""
    hvd.init()  # one process per slot; Horovod tells each its rank among all and on this host
    # Share this host's cores among its processes before TensorFlow starts its thread pools.
    threads = threads_per_process(hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    gpus = tf.config.list_physical_devices("GPU")  # one GPU per process (none on CPU hosts)
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")
    if cfg.mixed_precision:  # float16 compute, float32 weights; Keras adds loss scaling
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    tf.keras.utils.set_random_seed(cfg.seed + hvd.rank())  # shuffles differ per rank
    return threads


def threads_per_process(local_size: int) -> int:
    """Cores of this host shared among the processes on it, so they do not fight over cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(1, local_size))


# --- data ------------------------------------------------------------------------------------

@dataclass
class Data:
    """This rank's batches and the steps per epoch, the same on every rank: otherwise the last
    allreduce of an epoch waits for ever on the rank that stopped early."""

    train: tf.data.Dataset
    val: tf.data.Dataset | None
    steps_per_epoch: int
    files: list[str]  # this rank's training files ([] for the in-memory set)
    note: str  # how the data was split, for rank 0's first line
    file_set: records.FileSet | None = None  # this rank's training files, for their errors


def datasets(cfg: Config, rank: int, size: int) -> Data:
    """The in-memory set of data.load(), or the files of DATA (a collective: all ranks call)."""
    if not cfg.data:
        return in_memory(cfg, rank, size)
    try:
        train_set, val_set = records.training_and_validation(cfg.data, cfg.val_data,
                                                             data.RECORD)
    except records.DataError as exc:
        raise SystemExit(f"error: {exc}") from exc
    mine, by_record = train_set.shard(rank, size)
    # Steps from all ranks' records: each counts its own files (by record: all of them).
    counts = allgather_object(records.count(mine), name="record_counts")
    total = counts[0] if by_record else sum(counts)
    batch = cfg.batch_size
    train = records.dataset(mine, data.from_record, batch, rank=rank, size=size,
                            by_record=by_record, shuffle_seed=cfg.seed + rank,
                            shuffle_buffer=cfg.shuffle_buffer, record=data.RECORD)
    val = None
    if val_set is not None:
        val_mine, val_by_record = val_set.shard(rank, size)
        val = records.dataset(val_mine, data.from_record, batch, rank=rank, size=size,
                              by_record=val_by_record, record=data.RECORD)
    files = len(train_set.files)
    kind = "images" if train_set.fmt == "images" else f"{train_set.fmt} files"
    note = (f"{files} {kind} for {size} ranks: fewer files than ranks, so each "
            f"reads all and keeps 1 record in {size}" if by_record else
            f"{files} {kind}, " + "-".join(
                str(n) for n in sorted({files // size, -(-files // size)})) + " per rank")
    return Data(train, val, max(1, math.ceil(total / (batch * size))), list(mine.files),
                f"{total} records in {note}" + ("" if val else "; no validation files"), mine)


@contextmanager
def said_once(data: Data, elastic: bool = False) -> Iterator[None]:
    """Around what reads the data (the forecast, fit): a record further in than make train's
    check read that does not parse stops this rank with one line (which files, what is wrong),
    not TensorFlow's traceback; the ranks that Horovod then shuts down exit without theirs (the
    rank that stopped first says why). Elastic runs keep that error: it is their reset."""
    try:
        yield
    except tf.errors.InvalidArgumentError as exc:
        if data.file_set is None:
            raise
        names = ", ".join(data.files[:3]) + (", ..." if len(data.files) > 3 else "")
        raise SystemExit(f"error: a record in {names}: "
                         f"{records.why_unparsed(exc, data.file_set)}") from None
    except tf.errors.UnknownError as exc:
        if elastic or HOROVOD_SHUT_DOWN not in str(exc):
            raise
        raise SystemExit(1) from None


def in_memory(cfg: Config, rank: int, size: int) -> Data:
    """data.load()'s arrays, rank r taking every size-th sample from r."""
    x_train, y_train, x_val, y_val = data.load(cfg.val_fraction, cfg.seed)
    x, y = x_train[rank::size], y_train[rank::size]
    train = (tf.data.Dataset.from_tensor_slices((x, y))
             .shuffle(len(x), seed=cfg.seed + rank, reshuffle_each_iteration=True)
             .repeat().batch(cfg.batch_size).prefetch(tf.data.AUTOTUNE))
    val = tf.data.Dataset.from_tensor_slices((x_val[rank::size], y_val[rank::size]))
    steps = max(1, math.ceil(len(x_train) / (cfg.batch_size * size)))
    return Data(train, val.batch(cfg.batch_size), steps, [],
                f"{len(x_train)} in-memory records, 1 in {size} per rank")


def first_batch(cfg: Config, n: int = SAMPLE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The first n training examples (x, y), read alike on every rank and without a collective
    (the elastic mode builds its model before any): what model.build() sees."""
    if not cfg.data:
        x_train, y_train, _, _ = data.load(cfg.val_fraction, cfg.seed)
        return x_train[:n], y_train[:n]
    train_set, _ = records.training_and_validation(cfg.data, cfg.val_data, data.RECORD)
    for x, y in records.dataset(train_set, data.from_record, n, record=data.RECORD).take(1):
        return x.numpy(), y.numpy()
    raise records.DataError(f"DATA={cfg.data} holds no records")


# --- the model -------------------------------------------------------------------------------

def compiled_model(cfg: Config, size: int, sample: np.ndarray | None = None) -> tf.keras.Model:
    """model.build(sample) compiled with its loss and metrics and its optimizer wrapped by
    Horovod, whose slots exist at once (checkpoints and the elastic state carry them)."""
    model = model_module.build(sample)
    model.compile(optimizer=distributed_optimizer(cfg, size), loss=model_module.loss(),
                  metrics=model_module.metrics(), experimental_run_tf_function=False)
    model.optimizer.build(model.trainable_variables)
    return model


def distributed_optimizer(cfg: Config, size: int) -> tf.keras.optimizers.Optimizer:
    """model.optimizer() wrapped by Horovod: gradients are averaged across ranks by allreduce,
    every `accumulate` batches, sent as float16 with fp16_allreduce."""
    return hvd.DistributedOptimizer(
        # Scale the learning rate with the world size: the global batch is size times larger.
        model_module.optimizer(cfg.lr * size),
        backward_passes_per_step=cfg.accumulate, average_aggregated_gradients=True,
        compression=hvd.Compression.fp16 if cfg.fp16_allreduce else hvd.Compression.none)


def set_lr(model: tf.keras.Model, lr: float) -> None:
    """A checkpoint brings the rate of the world that saved it; this world may differ."""
    tf.keras.backend.set_value(model.optimizer.learning_rate, lr)


def broadcast_model(model: tf.keras.Model) -> None:
    """Every rank starts from rank 0's weights and optimizer state. Once, before fit: as a
    callback it ran inside the first batch and made TensorFlow warn that on_train_batch_end is
    slow."""
    broadcast_variables(model.variables + list(model.optimizer.variables), root_rank=0)


def callbacks(cfg: Config, size: int, steps_per_epoch: int, run: Path | None,
              progress: ProgressLine) -> list[tf.keras.callbacks.Callback]:
    """Every rank's callbacks, model.callbacks() after them (they see the averaged metrics),
    and rank 0's (run given): progress, checkpoints, TensorBoard."""
    shared = [
        hvd.callbacks.MetricAverageCallback(),  # rank 0 reports the metrics of all ranks
        # Warm up from lr to lr x size over the first epochs: large steps at once diverge.
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=cfg.lr * size,
                                                 warmup_epochs=cfg.warmup,
                                                 momentum_correction=False,
                                                 steps_per_epoch=steps_per_epoch)]
    shared += model_module.callbacks(rank0=run is not None)
    if run is None:
        return shared
    return shared + [progress, Checkpoints(run, progress), EpochSummaries(run / "tensorboard")]


# --- the scaling prediction (preflight.scaling) ---------------------------------------------

def compute_seconds(model: tf.keras.Model, dataset: tf.data.Dataset, steps: int = 10) -> float:
    """One rank's training step without the allreduce: a copy of the model with a plain
    optimizer trains on one batch through fit (forward, backward, update and Keras' own cost
    per step, as in training). Every rank times it at once, sharing the host's cores as in
    training. The mean gap between batch ends, the first two (tracing) left out."""
    batch = dataset.take(1).cache().repeat()
    alone = tf.keras.models.clone_model(model)
    alone.compile(optimizer=tf.keras.optimizers.Adam(), loss=model.loss)
    ends: list[float] = []
    alone.fit(batch, steps_per_epoch=steps + 2, epochs=1, verbose=0, callbacks=[
        tf.keras.callbacks.LambdaCallback(
            on_train_batch_end=lambda _batch, _logs: ends.append(time.perf_counter()))])
    return (ends[-1] - ends[1]) / (len(ends) - 2)


def forecast(cfg: Config, model: tf.keras.Model, data: Data, run: Path | None) -> dict:
    """With a preflight report (make train passes its own): every rank times its compute, and
    rank 0 (run given) prints the predicted step time, throughput and scaling for these hosts,
    the advice when communication dominates, and draws prediction.png. {} without a report."""
    if not cfg.network_report:
        return {}
    compute = compute_seconds(model, data.train)
    if run is None:
        return {}
    try:
        from preflight import scaling  # the project's package, installed in the venv
        report = json.loads(Path(cfg.network_report).read_text())
    except (ImportError, OSError, ValueError) as exc:
        print(f"prediction: skipped ({exc})", flush=True)
        return {"compute_ms": compute * 1e3}
    hosts = [h["host"] for h in report.get("hosts", []) if h.get("ok")][:hvd.cross_size()]
    if not hosts:
        print(f"prediction: skipped ({cfg.network_report} has no healthy host)", flush=True)
        return {"compute_ms": compute * 1e3}
    matrices = report.get("matrices") or {}
    gradients = sum(int(tf.size(v)) for v in model.trainable_variables)  # what is allreduced
    work = scaling.Workload(compute, gradients, cfg.batch_size, hvd.local_size(),
                            cfg.fp16_allreduce, cfg.accumulate)
    net = scaling.ring(hosts, matrices)
    tips = scaling.advice(net, work, matrices)
    print(scaling.summary(net, work) + "".join(f"\n  advice: {tip}" for tip in tips),
          flush=True)
    points = [asdict(p) for p in scaling.curve(hosts, matrices, work)]
    plot_prediction(points, None, run / "prediction.png")
    return {"compute_ms": compute * 1e3, "gradient_MB": work.gradient_bytes / 1e6,
            "hosts": hosts, "predicted": points, "advice": tips}


def plot_prediction(points: list[dict], measured: dict | None, path: Path) -> None:
    """Samples/s against hosts: predicted, ideal, and the run's own where measured."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    hosts = [p["hosts"] for p in points]
    ax.plot(hosts, [p["samples_per_s"] for p in points], "o-", label="predicted")
    ideal = points[0]["samples_per_s"]
    ax.plot(hosts, [ideal * n for n in hosts], ":", color="grey", label="perfect scaling")
    if measured:
        ax.plot([measured["hosts"]], [measured["samples_per_s"]], "r*", markersize=12,
                label="this run")
    ax.set_xlabel("hosts")
    ax.set_ylabel("samples/s, all ranks")
    ax.set_xticks(hosts)
    ax.legend()
    ax.set_title("Throughput against host count")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- runs and checkpoints --------------------------------------------------------------------

def new_run_dir(out: str) -> Path:
    run = Path(out) / datetime.now().strftime("%Y%m%d-%H%M%S")
    suffix = 1
    while run.exists():  # two runs in the same second
        run = run.with_name(f"{run.name.split('.')[0]}.{suffix}")
        suffix += 1
    (run / "checkpoints").mkdir(parents=True)
    return run


def data_name(cfg: Config) -> str:
    """What a run trains on, as make's variables name it."""
    if not cfg.data:
        return "data.py's in-memory set"
    return f"DATA={cfg.data}" + (f" VAL_DATA={cfg.val_data}" if cfg.val_data else "")


def write_config(run: Path, cfg: Config) -> None:
    """The values this run trained with; make evaluate reads its data settings from it."""
    (run / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")


def last_checkpoint(run: Path) -> tuple[Path, int] | None:
    """The newest checkpoint of a run and the number of epochs it completed."""
    found = [(int(m.group(1)), p) for p in (run / "checkpoints").glob("epoch-*.keras")
             if (m := CHECKPOINT_RE.search(p.name))]
    if not found:
        return None
    epoch, path = max(found)
    return path, epoch


def restore(model: tf.keras.Model, blob: bytes) -> None:
    """Weights and optimizer state from a checkpoint's bytes into the freshly compiled model (so
    this run's settings, ACCUMULATE or FP16, apply on resume)."""
    with tempfile.NamedTemporaryFile(suffix=".keras") as tmp:
        tmp.write(blob)
        tmp.flush()
        model.load_weights(tmp.name)


def save_atomically(model: tf.keras.Model, path: Path) -> None:
    """Via a temporary file and a rename: a process killed mid-write leaves the old file."""
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=path.parent)
    os.close(fd)
    model.save(tmp)
    os.replace(tmp, path)


class Checkpoints(tf.keras.callbacks.Callback):
    """After each epoch: epoch-NNN.keras (the last KEEP_CHECKPOINTS kept), and best.keras when
    the epoch is the best so far by model.BEST (the progress line, called first, keeps score).
    Keras' own format: the model, its weights and the optimizer state."""

    def __init__(self, run: Path, progress: ProgressLine) -> None:
        super().__init__()
        self.dir = run / "checkpoints"
        self.progress = progress

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        save_atomically(self.model, self.dir / f"epoch-{epoch + 1:03d}.keras")
        for old in sorted(self.dir.glob("epoch-*.keras"))[:-KEEP_CHECKPOINTS]:
            old.unlink()
        if self.progress.best.get("epoch") == epoch + 1:
            save_atomically(self.model, self.dir / "best.keras")


class EpochSummaries(tf.keras.callbacks.Callback):
    """The epoch's metrics for TensorBoard, laid out as Keras' TensorBoard callback does
    (train/ and validation/, epoch_<metric>). Keras' callback also works at every batch: 1.7 ms
    on average and ~45 ms in the first, which made TensorFlow warn that on_train_batch_end is
    slow; this one has no batch hook."""

    def __init__(self, folder: Path) -> None:
        super().__init__()
        self.writers = {part: tf.summary.create_file_writer(str(folder / part))
                        for part in ("train", "validation")}

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for name, value in (logs or {}).items():
            part, metric = ("validation", name[4:]) if name.startswith("val_") else \
                ("train", name)
            with self.writers[part].as_default():
                tf.summary.scalar(f"epoch_{metric}", value, step=epoch)
        for writer in self.writers.values():
            writer.flush()


class ProgressLine(tf.keras.callbacks.Callback):
    """One line per epoch (from rank 0): every metric, samples/s over all ranks, time left."""

    def __init__(self, epochs: int, global_batch: int, steps_per_epoch: int) -> None:
        super().__init__()
        self.epochs = epochs
        self.steps = steps_per_epoch
        self.samples_per_epoch = global_batch * steps_per_epoch
        self.rates: list[float] = []
        self.train_seconds: list[float] = []  # each epoch's training steps, validation left out
        self.last: dict[str, float] = {}
        self.best: dict = {}  # model.BEST's best value so far: metric, value, epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self.started = time.perf_counter()

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        if batch == self.steps - 1:
            self.train_seconds.append(time.perf_counter() - self.started)

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        seconds = time.perf_counter() - self.started
        self.rates.append(self.samples_per_epoch / seconds)
        self.last = {k: float(v) for k, v in (logs or {}).items() if k != "lr"}
        self.keep_score(epoch + 1)
        shown = "  ".join(f"{name} {value:.4f}" for name, value in self.last.items())
        left = (self.epochs - epoch - 1) * seconds
        print(f"epoch {epoch + 1:>3}/{self.epochs}  {shown}  {self.rates[-1]:,.0f} samples/s  "
              f"{left:.0f}s left", flush=True)

    def keep_score(self, epoch: int) -> None:
        metric, mode = model_module.BEST
        value = self.last.get(metric)
        if value is None:
            return
        if not self.best or (value > self.best["value"] if mode == "max"
                             else value < self.best["value"]):
            self.best = {"metric": metric, "value": value, "epoch": epoch}

    def samples_per_second(self) -> float:
        """Steady-state rate: the first epoch pays for graph tracing, so it is left out."""
        steady = self.rates[1:] or self.rates
        return sum(steady) / len(steady) if steady else 0.0

    def step_seconds(self) -> float | None:
        """The median training step (validation left out), first epoch left out."""
        steady = sorted(self.train_seconds[1:] or self.train_seconds)
        return steady[len(steady) // 2] / self.steps if steady else None


def finish(run: Path, model: tf.keras.Model, progress: ProgressLine, cfg: Config,
           initial_epoch: int, rank_hosts: list[str], rank_files: list[list[str]],
           predicted: dict | None = None) -> str:
    """Rank 0's end of a run: model.keras, metrics.json (with the scaling prediction beside
    what the run measured), and the line that says so."""
    model.save(run / "model.keras")  # tf.keras.models.load_model(path, compile=False) loads it
    metrics = {
        **progress.last, "best": progress.best,
        "samples_per_second": round(progress.samples_per_second(), 1),
        "world_size": len(rank_hosts), "rank_hosts": rank_hosts, "rank_files": rank_files,
        "epochs": cfg.epochs, "initial_epoch": initial_epoch,
        "compute_dtype": model.layers[0].compute_dtype,  # the model's, not the configuration's
        "settings": {k: getattr(cfg, k) for k in ("data", "val_data", "batch_size", "lr",
                                                  "accumulate", "fp16_allreduce",
                                                  "mixed_precision")},
    }
    if predicted:
        metrics["scaling"] = {**predicted, "measured": measured(predicted, progress,
                                                                   len(set(rank_hosts)))}
        if predicted.get("predicted"):
            plot_prediction(predicted["predicted"], metrics["scaling"]["measured"],
                            run / "prediction.png")
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return (f"done: {scores(progress)}; model {run / 'model.keras'}, metrics "
            f"{run / 'metrics.json'}, checkpoints {run / 'checkpoints'}")


def scores(progress: ProgressLine) -> str:
    """model.BEST's metric at the last epoch and at the best one (best.keras)."""
    name = model_module.BEST[0]
    last = f"{name} {progress.last.get(name, float('nan')):.4f} at the last epoch"
    best = progress.best
    if not best:
        return last
    return last + f", best {best['value']:.4f} at epoch {best['epoch']} (best.keras)"


def measured(predicted: dict, progress: ProgressLine, hosts: int) -> dict:
    """The run's own step time and communication share, beside the prediction: the share is
    what the step takes beyond the compute time timed before training."""
    step = progress.step_seconds()
    if not step:
        return {}
    compute = predicted["compute_ms"] / 1e3
    return {"hosts": hosts, "step_ms": step * 1e3,
            "samples_per_s": progress.samples_per_epoch / progress.steps / step,
            "comm_share": max(0.0, 1 - compute / step)}


def hostname() -> str:
    return socket.gethostname()
