"""Training configuration: the values of config.toml (the only home of the defaults), each
overridable on the command line (--epochs 5, --fp16-allreduce / --no-fp16-allreduce)."""

from __future__ import annotations

import argparse
import difflib
import json
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
DATA_KEYS = ("data", "val_data")  # what a resumed run keeps from its config.json


class ConfigError(ValueError):
    """A configuration that cannot run: the message says what and how to fix it."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes are a ConfigError (one line) instead of the usage text."""

    def error(self, message: str):
        raise ConfigError(f"{message}; see python template/train.py --help")


def load(argv: list[str] | None = None, description: str = "Data-parallel Keras training "
         "under horovodrun.") -> Config:
    """parse(), a mistake printed as one line `error: WHAT; FIX` (exit 2)."""
    try:
        return parse(argv, description)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def parse(argv: list[str] | None = None, description: str = "") -> Config:
    """Config from --config FILE (default config.toml), then command-line overrides; a resumed
    run (--resume) keeps the data of its config.json unless --data/--val-data say otherwise."""
    parser = Parser(description=description)
    parser.add_argument("--config", type=Path, default=DEFAULT_FILE, help="TOML file, [train]")
    for name, kind in TYPES.items():
        flag = f"--{name.replace('_', '-')}"
        if kind is bool:  # --fp16-allreduce / --no-fp16-allreduce: bool("False") would be True
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(flag, dest=name, type=kind)
    args = parser.parse_args(argv)
    values = read_file(args.config)
    given = {k: v for k, v in vars(args).items() if k != "config" and v is not None}
    values.update(given)
    if values["resume"] and not set(DATA_KEYS) & set(given):
        values.update(run_data(Path(values["resume"])))
    config = Config(**values)
    if config.problems():
        raise ConfigError(f"{'; '.join(config.problems())}; fix config.toml or the flag")
    return config


def run_data(run: Path) -> dict[str, str]:
    """DATA and VAL_DATA a run trained on, from its config.json ({} without one)."""
    try:
        saved = json.loads((run / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {key: saved[key] for key in DATA_KEYS if isinstance(saved.get(key), str)}


def read_file(path: Path) -> dict:
    """[train] of the file: every key of Config, each of its type, nothing else."""
    try:
        with open(path, "rb") as fh:
            values = tomllib.load(fh).get("train", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}; fix the file") from None
    unknown, missing = sorted(set(values) - set(TYPES)), sorted(set(TYPES) - set(values))
    if unknown:
        close = difflib.get_close_matches(unknown[0], missing or list(TYPES), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"the keys are {sorted(TYPES)}"
        raise ConfigError(f"{path}: [train] has an unknown key '{unknown[0]}'; {hint}")
    if missing:
        raise ConfigError(f"{path}: [train] misses the key '{missing[0]}'; add it (the "
                          "template's config.toml says what it means)")
    for name, value in values.items():
        kind = TYPES[name]
        if kind is float and type(value) is int:
            values[name] = float(value)
        elif type(value) is not kind:
            raise ConfigError(f"{path}: {name} = {value!r} is not {KIND_NAMES[kind]}; write "
                              f"it as one, e.g. {name} = {example(kind)}")
    return values


KIND_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "true or false"}


def example(kind: type) -> str:
    return {int: "2", float: "0.5", str: '"text"', bool: "true"}[kind]
