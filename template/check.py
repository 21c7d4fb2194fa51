"""What make train checks on the launching host before the preflight and horovodrun, so that a
mistake is one line and nothing is launched: the configuration (config.toml's keys and types,
the flags), the data (DATA/VAL_DATA hold files, the first record of each set parses and reaches
the model as data.from_record() makes it), and model.py's contract (build() runs, the model
takes the data, BEST is ("a metric the model reports", "max" or "min")).

python template/check.py [train.py's flags]: exit 0 with notes on stdout, or 2 with
`error: WHAT; FIX` on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# isort: off
import tfenv  # noqa: E402, F401  (before TensorFlow)
# isort: on

import config  # noqa: E402
import data  # noqa: E402
import loop  # noqa: E402
import model as model_module  # noqa: E402
import records  # noqa: E402

MODES = ("max", "min")


class Mistake(ValueError):
    """What is wrong and how to fix it, as one line."""


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = config.parse(argv)
        check_model_py()
        has_val = check_data(cfg)
        check_model(cfg, has_val)
    except (config.ConfigError, records.DataError, Mistake) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    if cfg.resume:
        print(f"RESUME={cfg.resume} trains on {loop.data_name(cfg)} (its config.json unless "
              "DATA= says otherwise)", flush=True)
    return 0


HOOKS = ("build", "loss", "metrics", "optimizer", "callbacks")


def check_model_py() -> None:
    missing = [name for name in HOOKS if not callable(getattr(model_module, name, None))]
    if missing:
        raise Mistake(f"model.py has no {missing[0]}(); add it (the template's model.py has "
                      "each, with what it must return)")
    best = getattr(model_module, "BEST", None)
    if not (isinstance(best, tuple) and len(best) == 2 and isinstance(best[0], str)):
        raise Mistake(f"model.py: BEST = {best!r} is not (metric, mode); write e.g. BEST = "
                      '("val_accuracy", "max")')
    if best[1] not in MODES:
        raise Mistake(f"model.py: BEST's mode {best[1]!r} is neither \"max\" nor \"min\"; "
                      f'write BEST = ("{best[0]}", "max") for a metric that grows better, '
                      '"min" for one that shrinks')


def check_data(cfg: config.Config) -> bool:
    """The data's files parse into the model's examples; whether there is a validation set."""
    if not cfg.data:
        return True  # data.load()'s split
    train, val = records.training_and_validation(cfg.data, cfg.val_data, data.RECORD)
    for file_set in (train, val) if val else (train,):
        records.first_example(file_set, data.from_record, data.RECORD)
    return val is not None


def check_model(cfg: config.Config, has_val: bool) -> None:
    """build() on a sample, compiled as training compiles it, evaluated on one batch: the
    metrics it reports must include BEST's."""
    x, y = loop.first_batch(cfg, cfg.batch_size)
    try:
        model = model_module.build(x)
        model.compile(optimizer=model_module.optimizer(cfg.lr), loss=model_module.loss(),
                      metrics=model_module.metrics())
        reported = list(model.evaluate(x, y, verbose=0, return_dict=True))
    except Exception as exc:  # noqa: BLE001  (the user's code: any error is theirs to see)
        raise Mistake(f"model.py does not run on data.py's examples (x {list(x.shape)}, y "
                      f"{list(y.shape)} {y.dtype}): {records.last_line(str(exc))}; fix "
                      "build()/loss()/metrics() or from_record()") from None
    names = reported + ([f"val_{name}" for name in reported] if has_val else [])
    metric = model_module.BEST[0]
    if metric in names:
        return
    if metric.startswith("val_") and metric[4:] in reported:
        raise Mistake(f"DATA={cfg.data} has no validation files (names starting with val, or "
                      f"VAL_DATA=), so BEST's {metric} is never reported; add val* files, give "
                      "VAL_DATA=, or pick a training metric for BEST")
    close = records.did_you_mean(metric, names)
    raise Mistake(f"model.py: BEST names {metric!r}, which the model does not report"
                  f"{close}; pick one of {names}")


if __name__ == "__main__":
    sys.exit(main())
