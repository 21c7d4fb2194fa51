"""Data-parallel training with Horovod: horovodrun starts this file once per slot (make train).
Elastic runs (make train ELASTIC=1) start train_elastic.py instead.

You edit model.py (model, loss, metrics), data.py (your data) and config.toml (the defaults);
loop.py holds the pieces both entry files share. Each Horovod step has its reason beside it.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# isort: off
import tfenv  # noqa: E402, F401  (before TensorFlow)
import horovod.tensorflow.keras as hvd  # noqa: E402
from horovod.tensorflow import allgather_object, broadcast_object  # noqa: E402
# isort: on

import config  # noqa: E402
import loop  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    cfg = config.load(argv)
    threads = loop.start(cfg)  # hvd.init(), this process's cores, GPU, precision, seed
    rank0 = hvd.rank() == 0
    run, checkpoint, initial_epoch = find_start(cfg)
    if initial_epoch >= cfg.epochs:
        if rank0:
            print(f"{run} already has {initial_epoch} epochs: nothing to do; ask for more with "
                  "EPOCHS=", flush=True)
        return 0

    data = loop.datasets(cfg, hvd.rank(), hvd.size())  # each rank its own files or shard
    model = loop.compiled_model(cfg, hvd.size(), loop.first_batch(cfg)[0])  # build() sees data
    if checkpoint is not None:
        loop.restore(model, checkpoint)
        loop.set_lr(model, cfg.lr * hvd.size())  # the world size may have changed
    loop.broadcast_model(model)  # all ranks start from rank 0's weights

    progress = loop.ProgressLine(cfg.epochs, cfg.batch_size * hvd.size(), data.steps_per_epoch)
    callbacks = loop.callbacks(cfg, hvd.size(), data.steps_per_epoch, run if rank0 else None,
                               progress)  # logging, checkpoints, TensorBoard: rank 0 alone
    if rank0:
        if checkpoint is None:  # a resumed run keeps its config.json: make evaluate reads it
            loop.write_config(run, cfg)
        print(f"training on {hvd.size()} processes ({hvd.local_size()} on {loop.hostname()}, "
              f"{threads} threads each), {data.note}, run directory {run}", flush=True)
    with loop.said_once(data):  # a bad record further in: one line, not a traceback per rank
        predicted = loop.forecast(cfg, model, data, run if rank0 else None)  # step time, scaling
        model.fit(data.train, steps_per_epoch=data.steps_per_epoch, epochs=cfg.epochs,
                  initial_epoch=initial_epoch, validation_data=data.val, callbacks=callbacks,
                  verbose=0)

    # Which host and files each rank had, for the record (and to show every rank took part).
    rank_hosts = allgather_object(loop.hostname(), name="rank_hosts")
    rank_files = allgather_object(data.files, name="rank_files")
    if rank0:
        print(loop.finish(run, model, progress, cfg, initial_epoch, rank_hosts, rank_files,
                          predicted), flush=True)
    return 0


def find_start(cfg: config.Config) -> tuple[Path, bytes | None, int]:
    """A new run directory, or cfg.resume's last checkpoint: rank 0 reads it and broadcasts
    its bytes, so the other hosts need no copy of it."""
    if not cfg.resume:
        return (loop.new_run_dir(cfg.out) if hvd.rank() == 0 else Path(cfg.out)), None, 0
    run = Path(cfg.resume)
    found = loop.last_checkpoint(run) if hvd.rank() == 0 else None
    payload = broadcast_object(found and (found[0].read_bytes(), found[1]), root_rank=0,
                               name="checkpoint")
    if not payload:
        raise SystemExit(f"error: resume: no checkpoint under {run}/checkpoints")
    blob, epoch = payload
    if hvd.rank() == 0:
        print(f"resuming {run} from epoch {epoch} (checkpoint epoch-{epoch:03d}.keras), "
              f"up to {cfg.epochs} epochs, on {loop.data_name(cfg)}", flush=True)
    return run, blob, epoch


if __name__ == "__main__":
    sys.exit(main())
