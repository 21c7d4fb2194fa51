"""Training configuration: the values of config.toml (the only home of the defaults), each
overridable on the command line (--epochs 5, --fp16-allreduce / --no-fp16-allreduce)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

DEFAULT_FILE = Path(__file__).with_name("config.toml")


@dataclass(frozen=True)
class Config:
    """One run's values; config.toml says what each means."""

    epochs: int
    batch_size: int
    lr: float
    warmup: int
    seed: int
    out: str
    data: str
    val_data: str
    val_fraction: float
    shuffle_buffer: int
    accumulate: int
    fp16_allreduce: bool
    mixed_precision: bool
    resume: str
    network_report: str

    def problems(self) -> list[str]:
        wrong = [f"{name} must be >= {least}" for name, least in
                 (("epochs", 1), ("batch_size", 1), ("warmup", 0), ("shuffle_buffer", 1),
                  ("accumulate", 1)) if getattr(self, name) < least]
        if not 0 < self.val_fraction < 1:
            wrong.append("val_fraction must be between 0 and 1")
        if self.lr <= 0:
            wrong.append("lr must be > 0")
        return wrong


TYPES = {f.name: {"int": int, "float": float, "str": str, "bool": bool}[f.type]
         for f in fields(Config)}


def load(argv: list[str] | None = None, description: str = "Data-parallel Keras training "
         "under horovodrun.") -> Config:
    """Config from --config FILE (default config.toml), then command-line overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", type=Path, default=DEFAULT_FILE, help="TOML file, [train]")
    for name, kind in TYPES.items():
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:  # --fp16-allreduce / --no-fp16-allreduce: bool("False") would be True
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=name, type=kind)
    args = parser.parse_args(argv)
    values = read_file(args.config, parser)
    values.update({k: v for k, v in vars(args).items() if k != "config" and v is not None})
    config = Config(**values)
    if config.problems():
        parser.error("; ".join(config.problems()))
    return config


def read_file(path: Path, parser: argparse.ArgumentParser) -> dict:
    """[train] of the file: every key of Config, each of its type, nothing else."""
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh).get("train", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        parser.error(f"{path}: {exc}")
    unknown, missing = set(values) - set(TYPES), set(TYPES) - set(values)
    if unknown or missing:
        parser.error(f"{path}: [train] " + "; ".join(
            part for part in (unknown and f"unknown keys {sorted(unknown)}",
                              missing and f"missing keys {sorted(missing)}") if part))
    for name, value in values.items():
        kind = TYPES[name]
        if kind is float and type(value) is int:
            values[name] = float(value)
        elif type(value) is not kind:
            parser.error(f"{path}: {name} = {value!r} is not a {kind.__name__}")
    return values
