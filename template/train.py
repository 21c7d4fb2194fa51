"""Data-parallel training of a Keras model with Horovod: horovodrun starts it once per slot.

Read top to bottom: each Horovod step is one line with the reason beside it. Change the model in
model.py, the data in data.py, the defaults in config.toml; this file rarely needs changes.
"""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, once per rank
# Keras 2 (tf_keras) as tf.keras on TensorFlow >= 2.16: Horovod 0.28.1's Keras layer needs it.
# Read when TensorFlow is imported, so before that, in every rank; where tf_keras is installed
# (the old stack, TF=2.15, has Keras 2 built in and no tf_keras).
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

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
    if cfg.elastic:  # under horovodrun's elastic mode hosts may leave and join: see below
        return train_elastic(cfg, threads)

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


# Elastic mode (make train ELASTIC=1): horovodrun asks preflight.discover which hosts are
# healthy; when one stops answering, the others get an error from their next collective, roll
# back to the last committed state, form a new, smaller world and go on. Hosts that come back
# join at the next commit. A worker that joins late runs main() from the top while the others
# wait in state.sync(), so nothing before train() may be a collective operation.
def train_elastic(cfg: config_module.Config, threads: int) -> int:
    x_train, y_train, x_val, y_val = data.load(cfg.val_fraction, cfg.seed)
    model, initial_epoch, run = build_elastic(cfg)
    # Create the optimizer's slots now: the state broadcasts them, so every rank needs the list.
    model.optimizer.build(model.trainable_variables)
    # What a reset rolls back to and a new worker receives from rank 0: weights, optimizer
    # slots, the epoch and batch reached, and the run directory rank 0 writes to.
    state = hvd.elastic.KerasState(model, batch=0, epoch=initial_epoch, run=str(run))

    def scale_lr() -> None:  # at the start and after each reset: the world size may change
        tf.keras.backend.set_value(state.model.optimizer.lr, cfg.lr * hvd.size())

    scale_lr()  # a restored optimizer comes with the rate of the world that saved it
    state.register_reset_callbacks([scale_lr])
    world: list[str] = []  # the hosts of the last world, to say what changed

    @hvd.elastic.run
    def train(state: hvd.elastic.KerasState) -> tuple[loop.ProgressLine, list[str]] | None:
        # Runs again after every reset, with this process's new rank and the new size.
        rank0 = hvd.rank() == 0
        hosts = allgather_object(socket.gethostname(), name="rank_hosts")
        if rank0:
            say_world(hosts, world, Path(state.run), state.epoch, threads)
        world[:] = hosts
        if state.epoch >= cfg.epochs:
            if rank0:
                print(f"{state.run} already has {state.epoch} epochs: nothing to do; ask for "
                      f"more with EPOCHS=", flush=True)
            return None
        # Re-shard for the new world: every sample is still seen once per epoch.
        x_shard, y_shard = data.shard(x_train, y_train, hvd.rank(), hvd.size())
        xv_shard, yv_shard = data.shard(x_val, y_val, hvd.rank(), hvd.size())
        steps_per_epoch = max(1, math.ceil(len(x_train) / (cfg.batch_size * hvd.size())))
        progress = loop.ProgressLine(cfg.epochs, cfg.batch_size * hvd.size(), steps_per_epoch)
        callbacks = [
            hvd.callbacks.MetricAverageCallback(),  # rank 0 reports all ranks' metrics
            hvd.callbacks.LearningRateWarmupCallback(initial_lr=cfg.lr * hvd.size(),
                                                     warmup_epochs=cfg.warmup,
                                                     momentum_correction=False,
                                                     steps_per_epoch=steps_per_epoch),
        ]
        if rank0:  # before the commit below, so an epoch's checkpoint precedes a reset
            callbacks += [progress, loop.AtomicCheckpoint(Path(state.run)),
                          tf.keras.callbacks.TensorBoard(log_dir=str(Path(state.run) /
                                                                     "tensorboard"),
                                                         profile_batch=0)]
        callbacks += [
            # Track how far training got, so a reset resumes there and not at epoch 0 ...
            hvd.elastic.UpdateBatchStateCallback(state),
            AbsoluteEpochState(state),
            # ... and commit it about once an epoch: a commit copies the weights and checks
            # for host changes; a lost host costs at most the work since the last one.
            hvd.elastic.CommitStateCallback(state, batches_per_commit=steps_per_epoch),
        ]
        state.model.fit(
            data.training_dataset(x_shard, y_shard, cfg.batch_size, cfg.seed + hvd.rank()),
            steps_per_epoch=steps_per_epoch, epochs=cfg.epochs, initial_epoch=state.epoch,
            validation_data=data.validation_dataset(xv_shard, yv_shard, cfg.batch_size),
            callbacks=callbacks, verbose=0)
        return progress, hosts

    done = train(state)
    if done is None and state.epoch < cfg.epochs:  # hvd.elastic.run returns None on errors
        raise SystemExit(f"training stopped at epoch {state.epoch} of {cfg.epochs}: see above")
    if done and hvd.rank() == 0:
        progress, hosts = done
        run = Path(state.run)
        model.save(run / "model.h5", include_optimizer=False)
        metrics = loop.write_metrics(run, progress, hosts, cfg.epochs, initial_epoch)
        print(f"done: val_accuracy {progress.last.get('val_accuracy', 0):.4f} on {len(hosts)} "
              f"processes; model {run / 'model.h5'}, metrics {metrics}, checkpoints "
              f"{run / 'checkpoints'}", flush=True)
    return 0


def build_elastic(cfg: config_module.Config) -> tuple[tf.keras.Model, int, Path]:
    """Like restore_or_build, without its broadcast: rank 0 alone reads the checkpoint and
    state.sync() hands its weights, epoch and run directory to the others."""
    if cfg.resume and hvd.rank() == 0:
        found = loop.last_checkpoint(Path(cfg.resume))
        if found is None:
            raise SystemExit(f"resume: no checkpoint under {cfg.resume}/checkpoints")
        print(f"resuming {cfg.resume} from epoch {found[1]}, up to {cfg.epochs} epochs",
              flush=True)
        return hvd.load_model(str(found[0])), found[1], Path(cfg.resume)
    run = loop.new_run_dir(cfg.out) if hvd.rank() == 0 and not cfg.resume else Path(cfg.out)
    model = model_module.build(data.INPUT_SHAPE, data.NUM_CLASSES)
    # Gradients are averaged across ranks by allreduce at each step, as in restore_or_build.
    model.compile(optimizer=hvd.DistributedOptimizer(tf.keras.optimizers.Adam(cfg.lr)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  experimental_run_tf_function=False)
    return model, 0, run


def say_world(hosts: list[str], before: list[str], run: Path, epoch: int, threads: int) -> None:
    """Rank 0's line about the world it trains in: at the start, and after each reset."""
    on = ", ".join(sorted(set(hosts)))
    if not before:
        print(f"training on {len(hosts)} processes on {on} ({threads} threads each), elastic, "
              f"run directory {run}", flush=True)
    elif sorted(hosts) != sorted(before):
        print(f"hosts changed: now {len(hosts)} processes on {on} (was {len(before)}); "
              f"going on from epoch {epoch}", flush=True)
    else:
        print(f"reset after an error: same {len(hosts)} processes; going on from epoch {epoch}",
              flush=True)


class AbsoluteEpochState(hvd.elastic.UpdateEpochStateCallback):
    """Sets state.epoch to the epochs done. Horovod's callback adds the epoch training started
    at to Keras' epoch index, which is right for fit(epochs=E - state.epoch); fit here starts at
    initial_epoch=state.epoch, so Keras' index is already the absolute epoch."""

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.initial_epoch = 0


if __name__ == "__main__":
    sys.exit(main())
