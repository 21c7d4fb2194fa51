"""Data-parallel training of a Keras model with Horovod: horovodrun starts it once per slot.

Read top to bottom: each Horovod step is one line with the reason beside it. Change the model in
model.py, the data in data.py, the defaults in config.toml; this file rarely needs changes.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, once per rank

import horovod.tensorflow.keras as hvd  # noqa: E402
import tensorflow as tf  # noqa: E402
from horovod.tensorflow import allgather_object, broadcast_object  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import config as config_module  # noqa: E402
import data  # noqa: E402
import loop  # noqa: E402
import model as model_module  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = config_module.load(argv)

    # One process per slot; Horovod tells each its rank among all and on this host.
    hvd.init()
    rank0 = hvd.rank() == 0

    # Share this host's cores among its processes before TensorFlow starts its thread pools.
    threads = loop.threads_per_process(hvd.local_size())
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # Pin one GPU per process where the host has GPUs (a no-op on CPU hosts).
    gpus = tf.config.list_physical_devices("GPU")
    for gpu in gpus:
        tf.config.experimental.set_memory_growth(gpu, True)
    if gpus:
        tf.config.set_visible_devices(gpus[hvd.local_rank() % len(gpus)], "GPU")

    tf.keras.utils.set_random_seed(cfg.seed + hvd.rank())  # shuffles differ per rank

    # Every rank reads its own shard of the same split.
    x_train, y_train, x_val, y_val = data.load(cfg.val_fraction, cfg.seed)
    x_shard, y_shard = data.shard(x_train, y_train, hvd.rank(), hvd.size())
    xv_shard, yv_shard = data.shard(x_val, y_val, hvd.rank(), hvd.size())
    # The same number of steps on every rank, or the last allreduce of an epoch waits forever.
    steps_per_epoch = max(1, math.ceil(len(x_train) / (cfg.batch_size * hvd.size())))

    # Scale the learning rate with the world size: the global batch is size times larger.
    scaled_lr = cfg.lr * hvd.size()
    model, initial_epoch, run = restore_or_build(cfg, scaled_lr)
    if initial_epoch >= cfg.epochs:
        if rank0:
            print(f"{run} already has {initial_epoch} epochs: nothing to do; ask for more with "
                  f"EPOCHS=", flush=True)
        return 0

    callbacks = [
        # Start all ranks from rank 0's weights (random init, or the checkpoint it restored).
        hvd.callbacks.BroadcastGlobalVariablesCallback(0),
        # Average the epoch's metrics over all ranks, so rank 0 reports the whole picture.
        hvd.callbacks.MetricAverageCallback(),
        # Warm up from lr to lr x size over the first epochs: large steps at once diverge.
        hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=cfg.warmup,
                                                 momentum_correction=False,
                                                 steps_per_epoch=steps_per_epoch),
    ]
    progress = loop.ProgressLine(cfg.epochs, cfg.batch_size * hvd.size(), steps_per_epoch)
    if rank0:  # logging, checkpoints and TensorBoard from rank 0 alone
        callbacks += [progress, loop.AtomicCheckpoint(run),
                      tf.keras.callbacks.TensorBoard(log_dir=str(run / "tensorboard"),
                                                     profile_batch=0)]
        print(f"training on {hvd.size()} processes ({hvd.local_size()} on {socket.gethostname()}"
              f", {threads} threads each), run directory {run}", flush=True)

    model.fit(data.training_dataset(x_shard, y_shard, cfg.batch_size, cfg.seed + hvd.rank()),
              steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, initial_epoch=initial_epoch,
              validation_data=data.validation_dataset(xv_shard, yv_shard, cfg.batch_size),
              callbacks=callbacks, verbose=0)

    # Which host each rank ran on, for the record (and to show that every rank took part).
    rank_hosts = allgather_object(socket.gethostname(), name="rank_hosts")
    if rank0:
        model.save(run / "model.h5", include_optimizer=False)  # plain Keras can load it
        metrics = loop.write_metrics(run, progress, rank_hosts, cfg.epochs, initial_epoch)
        print(f"done: val_accuracy {progress.last.get('val_accuracy', 0):.4f}; "
              f"model {run / 'model.h5'}, metrics {metrics}, checkpoints {run / 'checkpoints'}",
              flush=True)
    return 0


def restore_or_build(cfg: config_module.Config, scaled_lr: float
                     ) -> tuple[tf.keras.Model, int, Path]:
    """A fresh model, or the last checkpoint of cfg.resume, on every rank alike.

    Rank 0 reads the checkpoint and broadcasts its bytes, so the other hosts need no copy of it.
    """
    if not cfg.resume:
        run = loop.new_run_dir(cfg.out) if hvd.rank() == 0 else Path(cfg.out)
        model = model_module.build(data.INPUT_SHAPE, data.NUM_CLASSES)
        # Wrap the optimizer: gradients are averaged across ranks by allreduce at each step.
        optimizer = hvd.DistributedOptimizer(tf.keras.optimizers.Adam(scaled_lr))
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"], experimental_run_tf_function=False)
        return model, 0, run

    run = Path(cfg.resume)
    found = loop.last_checkpoint(run) if hvd.rank() == 0 else None
    payload = (found[0].read_bytes(), found[1]) if found else None
    payload = broadcast_object(payload, root_rank=0, name="checkpoint")
    if payload is None:
        raise SystemExit(f"resume: no checkpoint under {run}/checkpoints")
    blob, epoch = payload
    with tempfile.NamedTemporaryFile(suffix=".h5") as tmp:
        tmp.write(blob)
        tmp.flush()
        model = hvd.load_model(tmp.name)  # wraps the restored optimizer in DistributedOptimizer
    tf.keras.backend.set_value(model.optimizer.lr, scaled_lr)  # the world size may have changed
    if hvd.rank() == 0:
        print(f"resuming {run} from epoch {epoch} (checkpoint epoch-{epoch:03d}.h5), "
              f"up to {cfg.epochs} epochs", flush=True)
    return model, epoch, run


if __name__ == "__main__":
    sys.exit(main())
