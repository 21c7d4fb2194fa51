"""Elastic training (make train ELASTIC=1): horovodrun asks preflight.discover which hosts are
healthy; when one stops answering, the others get an error from their next collective, roll
back to the last committed state, form a new, smaller world and go on. Hosts that come back join
at the next commit. A worker that joins late runs main() from the top while the others wait in
state.sync(), so nothing before train() may be a collective operation.

Static runs start train.py; both share loop.py. You edit model.py, data.py and config.toml.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# isort: off
import tfenv  # noqa: E402, F401  (before TensorFlow)
import horovod.tensorflow.keras as hvd  # noqa: E402
from horovod.tensorflow import allgather_object  # noqa: E402
# isort: on

import config  # noqa: E402
import loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = config.load(argv)
    threads = loop.start(cfg)
    model = loop.compiled_model(cfg, hvd.size(), loop.first_batch(cfg)[0])  # build() sees data
    run, initial_epoch = find_start(cfg, model)
    # What a reset rolls back to and a new worker receives from rank 0: weights, optimizer
    # slots, the epoch and batch reached, and the run directory rank 0 writes to.
    state = hvd.elastic.KerasState(model, batch=0, epoch=initial_epoch, run=str(run))
    scale_lr = lambda: loop.set_lr(state.model, cfg.lr * hvd.size())  # noqa: E731
    scale_lr()  # now and after each reset: the world size may change
    state.register_reset_callbacks([scale_lr])
    world: list[str] = []  # the hosts of the last world, to say what changed

    @hvd.elastic.run
    def train(state: hvd.elastic.KerasState) -> tuple | None:
        # Runs again after every reset, with this process's new rank and the new size.
        rank0, run = hvd.rank() == 0, Path(state.run)
        hosts = allgather_object(loop.hostname(), name="rank_hosts")
        if rank0:
            say_world(hosts, world, run, state.epoch, threads)
        world[:] = hosts
        if state.epoch >= cfg.epochs:
            if rank0:
                print(f"{run} already has {state.epoch} epochs: nothing to do; ask for more "
                      "with EPOCHS=", flush=True)
            return None
        data = loop.datasets(cfg, hvd.rank(), hvd.size())  # re-sharded for the new world
        progress = loop.ProgressLine(cfg.epochs, cfg.batch_size * hvd.size(),
                                     data.steps_per_epoch)
        # Rank 0's checkpoint comes before the commit below, so an epoch's checkpoint precedes
        # a reset.
        callbacks = loop.callbacks(cfg, hvd.size(), data.steps_per_epoch,
                                   run if rank0 else None, progress) + [
            # Track how far training got, so a reset resumes there and not at epoch 0 ...
            hvd.elastic.UpdateBatchStateCallback(state),
            AbsoluteEpochState(state),
            # ... and commit it about once an epoch: a commit copies the weights and checks
            # for host changes; a lost host costs at most the work since the last one.
            hvd.elastic.CommitStateCallback(state, batches_per_commit=data.steps_per_epoch)]
        with loop.said_once(data, elastic=True):  # a bad record further in: one line
            state.model.fit(data.train, steps_per_epoch=data.steps_per_epoch, epochs=cfg.epochs,
                            initial_epoch=state.epoch, validation_data=data.val,
                            callbacks=callbacks, verbose=0)
        return progress, hosts, allgather_object(data.files, name="rank_files")

    done = train(state)
    if done is None and state.epoch < cfg.epochs:  # hvd.elastic.run returns None on errors
        raise SystemExit(f"error: training stopped at epoch {state.epoch} of {cfg.epochs}")
    if done and hvd.rank() == 0:
        progress, hosts, rank_files = done
        print(loop.finish(Path(state.run), model, progress, cfg, initial_epoch, hosts,
                          rank_files) + f" (on {len(hosts)} processes)", flush=True)
    return 0


def find_start(cfg: config.Config, model) -> tuple[Path, int]:
    """A new run directory, or cfg.resume's last checkpoint loaded on rank 0 alone (no
    broadcast here: state.sync() hands rank 0's weights, epoch and run to the others)."""
    if hvd.rank() != 0:
        return Path(cfg.out), 0
    if not cfg.resume:
        run = loop.new_run_dir(cfg.out)
        loop.write_config(run, cfg)
        return run, 0
    found = loop.last_checkpoint(Path(cfg.resume))
    if found is None:
        raise SystemExit(f"error: resume: no checkpoint under {cfg.resume}/checkpoints")
    loop.restore(model, found[0].read_bytes())
    print(f"resuming {cfg.resume} from epoch {found[1]}, up to {cfg.epochs} epochs, on "
          f"{loop.data_name(cfg)}", flush=True)
    return Path(cfg.resume), found[1]


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
