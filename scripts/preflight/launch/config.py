"""make train's variables, read once from the environment make passes and checked before any
preflight runs: every mistake is a UserError naming the variable and the fix (exit 2).

Relative paths are relative to the repository (make train runs there, and the launcher changes
to it), as horovodrun, the preflight and template/train.py see them.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from .. import inventory as inv
from ..errors import UserError

ROOT = Path(__file__).resolve().parents[3]  # scripts/preflight/launch/config.py -> the repository
WHOLE = re.compile(r"^[1-9][0-9]*$")
# make's variable -> template/train.py's flag, passed on as given (train.py checks the values).
TRAINING_FLAGS = (("EPOCHS", "epochs"), ("BATCH_SIZE", "batch-size"), ("LR", "lr"),
                  ("WARMUP", "warmup"), ("OUT", "out"), ("SEED", "seed"), ("RESUME", "resume"),
                  ("DATA", "data"), ("VAL_DATA", "val-data"), ("ACCUMULATE", "accumulate"))
# make's 1/0 variable -> train.py's --flag / --no-flag.
SWITCHES = (("FP16", "fp16-allreduce"), ("MIXED_PRECISION", "mixed-precision"))


@dataclass(frozen=True)
class LaunchConfig:
    """One `make train`: where the hosts come from, how many processes, the training values,
    and the elastic options. None: the variable was not given (make passes empty as unset)."""

    root: Path  # the repository: template/train.py and scripts/discover_hosts.sh live here
    venv: Path  # VENV: its python runs the preflight and the ranks, its horovodrun the job
    report: Path = Path("preflight.json")  # REPORT
    preflight_hostfile: Path = Path("hostfile")  # PREFLIGHT_HOSTFILE: the preflight's output
    hostfile: Path | None = None  # HOSTFILE: launch on it (preflighted unless vouched for)
    hosts: str | None = None  # HOSTS: 'h1:2,h2:2', for the preflight
    inventory: Path | None = None  # INVENTORY: an inventory file, for the preflight
    np: int | None = None  # NP: processes; None: all slots of the healthy hosts
    epochs: str | None = None
    batch_size: str | None = None
    lr: str | None = None
    warmup: str | None = None
    out: str | None = None
    seed: str | None = None
    resume: str | None = None  # RESUME: a run directory with checkpoints/
    data: str | None = None  # DATA: training files (folder, file, glob), absolute
    val_data: str | None = None  # VAL_DATA: validation files, absolute
    accumulate: str | None = None  # ACCUMULATE: backward passes per allreduce
    fp16: bool | None = None  # FP16=1/0: float16 gradients in the allreduce
    mixed_precision: bool | None = None  # MIXED_PRECISION=1/0
    verbose: bool = False  # VERBOSE=1: the job's output as horovodrun prints it
    bandwidth: bool = False  # BANDWIDTH=1: the preflight measures each link's bandwidth too
    interface: str | None = None  # INTERFACE: the network the preflight must use (name, CIDR)
    elastic: bool = False  # ELASTIC=1
    min_np: int | None = None  # MIN_NP (elastic): None means 1
    max_np: int | None = None  # MAX_NP (elastic): None means no limit
    ssh_keepalive: int = 5  # SSH_KEEPALIVE (elastic): seconds between ssh keepalives
    discover_every: float | None = None  # DISCOVER_EVERY (elastic): the discovery's cache age
    discover_timeout: float | None = None  # DISCOVER_TIMEOUT (elastic): its per-step limit

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def horovodrun(self) -> Path:
        return self.venv / "bin" / "horovodrun"

    @property
    def train_script(self) -> Path:
        return self.root / "template" / ("train_elastic.py" if self.elastic else "train.py")

    @property
    def discovery_script(self) -> Path:
        return self.root / "scripts" / "discover_hosts.sh"

    @property
    def least_np(self) -> int:
        return self.min_np or 1

    def training_args(self) -> list[str]:
        """template/train.py's flags for the values given."""
        args = [arg for name, flag in TRAINING_FLAGS
                if (value := getattr(self, name.lower())) is not None
                for arg in (f"--{flag}", value)]
        args += [f"--{'' if on else 'no-'}{flag}" for name, flag in SWITCHES
                 if (on := getattr(self, name.lower())) is not None]
        # The links the preflight measured: train.py predicts the step time from them.
        return args + ["--network-report", str((self.root / self.report).resolve())]

    def preflight_inventory_args(self) -> list[str]:
        """What the preflight checks when there is no HOSTFILE: INVENTORY, else HOSTS, else this
        machine."""
        if self.inventory is not None:
            return ["--inventory", str(self.inventory)]
        if self.hosts is not None:
            return ["--hosts", self.hosts]
        return []

    def discovery_env(self) -> dict[str, str]:
        """DISCOVER_INVENTORY or DISCOVER_HOSTS for the discovery: the inventory this job started
        from (HOSTFILE, else INVENTORY, else HOSTS), so that a host out at the start can join."""
        if self.hostfile is not None:
            return {"DISCOVER_INVENTORY": str(self.hostfile.resolve())}
        if self.inventory is not None:
            return {"DISCOVER_INVENTORY": str(self.inventory.resolve())}
        if self.hosts is not None:
            return {"DISCOVER_HOSTS": self.hosts}
        return {}

    @classmethod
    def from_env(cls, env: Mapping[str, str], root: Path = ROOT) -> LaunchConfig:
        """The variables make passes; the checks run in today's order, the first mistake
        raises."""
        def get(name: str) -> str | None:
            return env.get(name) or None

        venv = Path(get("VENV") or root / ".venv")
        if not os.access(venv / "bin" / "python", os.X_OK):
            raise UserError(f"no venv at {venv}", "run make setup")
        resume = get("RESUME")
        if resume is not None and not (Path(resume) / "checkpoints").is_dir():
            raise UserError(f"RESUME={resume} has no checkpoints/ folder",
                            "give a run directory such as runs/20260101-120000")
        elastic, min_np, max_np = elastic_values(get("ELASTIC"), get("MIN_NP"), get("MAX_NP"))
        hostfile = get("HOSTFILE")
        if hostfile is not None:
            check_hostfile(Path(hostfile))
        np = get("NP")
        data, val_data = (data_files(name, get(name), root) for name in ("DATA", "VAL_DATA"))
        return cls(
            root=root, venv=venv, report=Path(get("REPORT") or "preflight.json"),
            preflight_hostfile=Path(get("PREFLIGHT_HOSTFILE") or "hostfile"),
            hostfile=None if hostfile is None else Path(hostfile), hosts=get("HOSTS"),
            inventory=None if get("INVENTORY") is None else Path(env["INVENTORY"]),
            np=None if np is None else whole("NP", np),
            epochs=get("EPOCHS"), batch_size=get("BATCH_SIZE"), lr=get("LR"),
            warmup=get("WARMUP"), out=get("OUT"), seed=get("SEED"), resume=resume,
            data=data, val_data=val_data, accumulate=get("ACCUMULATE"),
            fp16=switch("FP16", get("FP16")),
            mixed_precision=switch("MIXED_PRECISION", get("MIXED_PRECISION")),
            verbose=bool(switch("VERBOSE", get("VERBOSE"))),
            bandwidth=bool(switch("BANDWIDTH", get("BANDWIDTH"))), interface=get("INTERFACE"),
            elastic=elastic, min_np=min_np, max_np=max_np,
            ssh_keepalive=whole("SSH_KEEPALIVE", get("SSH_KEEPALIVE") or "5"),
            discover_every=seconds("DISCOVER_EVERY", get("DISCOVER_EVERY"), zero=True),
            discover_timeout=seconds("DISCOVER_TIMEOUT", get("DISCOVER_TIMEOUT"), zero=False))


def whole(name: str, value: str) -> int:
    if not WHOLE.match(value):
        raise UserError(f"{name}={value} must be a whole number of at least 1",
                        f"e.g. {name}=2, or leave {name} out")
    return int(value)


def switch(name: str, value: str | None) -> bool | None:
    """A 1/0 variable; None when not given."""
    if value not in (None, "0", "1"):
        raise UserError(f"{name}={value} is neither 1 nor 0", f"use {name}=1 or {name}=0")
    return None if value is None else value == "1"


def data_files(name: str, value: str | None, root: Path) -> str | None:
    """DATA or VAL_DATA as an absolute path or glob (ranks on other hosts may start elsewhere),
    refused at once when it names nothing."""
    if value is None:
        return None
    path = str(Path(root, value))  # an absolute value stays as it is
    if not (Path(path).exists() or glob.glob(path)):
        raise UserError(f"{name}={value} names no file, folder or glob match",
                        "give a folder of .csv or .tfrecord files or of class folders of "
                        "images (make data-files DEST=... writes an example), a file or a "
                        "quoted glob")
    return path


def seconds(name: str, value: str | None, zero: bool) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        number = -1.0
    if number < 0 or (number == 0 and not zero) or number != number:  # NaN
        raise UserError(f"{name}={value} must be a number of seconds"
                        f"{' (0 or more)' if zero else ' above 0'}",
                        f"e.g. {name}=5, or leave {name} out")
    return number


def elastic_values(elastic: str | None, min_np: str | None,
                   max_np: str | None) -> tuple[bool, int | None, int | None]:
    """ELASTIC, MIN_NP, MAX_NP: checked before any preflight; MIN_NP <= NP once NP is known."""
    if elastic in (None, "0"):
        if min_np is not None or max_np is not None:
            raise UserError("MIN_NP and MAX_NP are for elastic runs",
                            "add ELASTIC=1, or leave them out")
        return False, None, None
    if elastic != "1":
        raise UserError(f"ELASTIC={elastic} is neither 1 nor 0",
                        "use ELASTIC=1 for an elastic run, or leave ELASTIC out")
    return (True, None if min_np is None else whole("MIN_NP", min_np),
            None if max_np is None else whole("MAX_NP", max_np))


def check_hostfile(path: Path) -> inv.Inventory:
    """HOSTFILE exists and parses (the project's one hostfile parser), or a UserError naming
    the line and the fix."""
    if not path.is_file():
        raise UserError(f"HOSTFILE={path} does not exist",
                        "give an existing hostfile, or leave HOSTFILE out and the preflight "
                        "writes one")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"HOSTFILE={path} cannot be read ({exc})",
                        "give a readable text file of 'host slots=N' lines") from exc
    return inv.parse_hostfile(text, f"HOSTFILE={path}")
