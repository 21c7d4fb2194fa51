"""make evaluate RUN=runs/<id>: the run's saved model on its validation set, in one process.

Loads RUN/model.keras (or --checkpoint best / last: RUN/checkpoints/best.keras or the newest
epoch-NNN.keras), compiles it with model.py's loss and metrics, and reads the validation data
as the run did (its config.json: DATA and VAL_DATA, else data.py's in-memory split). Prints one
line of metrics and exits 0; a run without that file or data is an error (exit 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# isort: off
import tfenv  # noqa: E402, F401  (before TensorFlow)
import tensorflow as tf  # noqa: E402
# isort: on

import config  # noqa: E402
import data  # noqa: E402
import model as model_module  # noqa: E402
import records  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make evaluate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a run directory, e.g. runs/20260101-120000")
    parser.add_argument("--checkpoint", choices=("model", "best", "last"), default="model")
    args = parser.parse_args(argv)
    try:
        cfg = run_config(args.run)
        path = model_file(args.run, args.checkpoint)
        val = validation_data(cfg)
    except (OSError, ValueError) as exc:  # records.DataError is a ValueError
        print(f"make evaluate: error: {exc}", file=sys.stderr)
        return 2
    if cfg.mixed_precision:
        tf.keras.mixed_precision.set_global_policy("mixed_float16")
    model = tf.keras.models.load_model(path, compile=False)  # Horovod's optimizer not needed
    model.compile(loss=model_module.loss(), metrics=model_module.metrics())
    results = model.evaluate(val, verbose=0, return_dict=True)
    shown = "  ".join(f"val_{name} {value:.4f}" for name, value in results.items())
    print(f"{path}: {shown}", flush=True)
    return 0


def run_config(run: Path) -> config.Config:
    """The values the run trained with (its config.json), over config.toml's."""
    saved = json.loads((run / "config.json").read_text())
    defaults = config.load([])
    return replace(defaults, **{f.name: saved[f.name] for f in fields(config.Config)
                                if f.name in saved})


def model_file(run: Path, which: str) -> Path:
    if which == "model":
        path = run / "model.keras"
    elif which == "best":
        path = run / "checkpoints" / "best.keras"
    else:
        found = sorted((run / "checkpoints").glob("epoch-*.keras"))
        path = found[-1] if found else run / "checkpoints" / "epoch-NNN.keras"
    if not path.is_file():
        raise OSError(f"{path} does not exist (a finished run has model.keras; a stopped one "
                      "has checkpoints: --checkpoint last)")
    return path


def validation_data(cfg: config.Config) -> tf.data.Dataset:
    if not cfg.data:
        _, _, x_val, y_val = data.load(cfg.val_fraction, cfg.seed)
        return tf.data.Dataset.from_tensor_slices((x_val, y_val)).batch(cfg.batch_size)
    _, val_set = records.training_and_validation(cfg.data, cfg.val_data, data.RECORD)
    if val_set is None:
        raise ValueError(f"the run's data {cfg.data} has no validation files (val*, or VAL_DATA)")
    return records.dataset(val_set, data.from_record, cfg.batch_size, record=data.RECORD)


if __name__ == "__main__":
    sys.exit(main())
