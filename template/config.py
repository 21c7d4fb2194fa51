"""Training configuration: defaults from config.toml, each value overridable on the command line."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.9/3.10
    import tomli as tomllib

DEFAULT_FILE = Path(__file__).with_name("config.toml")


@dataclass(frozen=True)
class Config:
    epochs: int = 15
    batch_size: int = 32
    lr: float = 0.001
    warmup: int = 2
    seed: int = 42
    out: str = "runs"
    val_fraction: float = 0.2
    resume: str = ""  # a run directory to continue from (its last checkpoint)
    elastic: bool = False  # run under horovodrun's elastic mode: hosts may leave and join

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.warmup < 0:
            raise ValueError("epochs and batch_size must be >= 1, warmup >= 0")
        if not 0 < self.val_fraction < 1 or self.lr <= 0:
            raise ValueError("val_fraction must be in (0, 1) and lr > 0")


def load(argv: list[str] | None = None) -> Config:
    """Config from --config FILE (default config.toml), then command-line overrides."""
    parser = argparse.ArgumentParser(description="Data-parallel Keras training under horovodrun.")
    parser.add_argument("--config", type=Path, default=DEFAULT_FILE, help="TOML file [train]")
    for f in fields(Config):
        flag = f"--{f.name.replace('_', '-')}"
        if _ctor(f.name) is bool:  # --elastic / --no-elastic: bool("False") would be True
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None)
        else:
            parser.add_argument(flag, dest=f.name, type=_ctor(f.name), default=None)
    args = parser.parse_args(argv)
    with open(args.config, "rb") as fh:
        values = tomllib.load(fh).get("train", {})
    unknown = set(values) - {f.name for f in fields(Config)}
    if unknown:
        parser.error(f"{args.config}: unknown keys {sorted(unknown)}")
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    config = Config(**values)
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config


def _ctor(name: str) -> type:
    """The type to parse a field's command-line value with (annotations are strings here)."""
    return type(getattr(Config, name))
