"""What every benchmark shares: the simulated cluster's lifecycle, timing a command, medians,
and writing a result as JSON (the figures) and PNG (the picture) under bench/results/.

Kept light on imports (rich and matplotlib load inside the functions that draw), because the
worker halves of the benchmarks import this module too, on every simulated host.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

# The simulated cluster and the process runner: standard library only, light for the workers too.
import simcluster
from preflight.errors import UserError
from preflight.proc import Ran, job_env, run
from simcluster.settings import SUBNET

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("VENV") or ROOT / ".venv").resolve()  # make exports VENV
PYTHON = str(VENV / "bin" / "python")
HOROVODRUN = str(VENV / "bin" / "horovodrun")
RESULTS = ROOT / "bench" / "results"
# Our own namespaces and state directory, so the test suite's 'hvsim' cluster (or another
# helper's) is never touched, and ours never collides with theirs.
PREFIX = os.environ.get("BENCH_PREFIX", "hvbench")
CIDR = f"{SUBNET}.0/24"  # simcluster puts host hN at 10.231.0.(10+N) on eth0
IFACE = "eth0"
# The transport the preflight's MPI check and the job use: TCP on the cluster network only, for
# MPI's data (btl) and for mpirun's own wiring (oob).
MPI_TRANSPORT = ["--mca", "pml", "ob1", "--mca", "btl", "self,tcp",
                 "--mca", "btl_tcp_if_include", CIDR, "--mca", "oob_tcp_if_include", CIDR]
Say = Callable[[str], None]  # a progress line for the person waiting


# --- running and timing commands -----------------------------------------------------------------
# One runner for the whole project (preflight.proc): its own process group, stopped whole on
# timeout (mpirun and horovodrun leave children behind otherwise), and one result type.


def timed(argv: Sequence[str], timeout_s: float, env: Mapping[str, str] | None = None,
          cwd: Path = ROOT) -> Ran:
    """Runs argv to its end or timeout_s and times it, with the job environment by default."""
    return run(argv, timeout_s, env=dict(env or job_env()), cwd=cwd)


def median(values: Iterable[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return statistics.median(kept) if kept else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def last_json_line(text: str) -> dict:
    """The last line of a worker's output that holds a JSON object. mpirun may tag lines, and
    put its tag for the next line after the object: what follows the object is ignored."""
    for line in reversed(text.splitlines()):
        start = line.find("{")
        if start < 0:
            continue
        try:
            value, _ = json.JSONDecoder().raw_decode(line[start:])
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise ValueError("no JSON object in the output")


# --- the simulated cluster -----------------------------------------------------------------------

@dataclass
class Cluster:
    """The simulated cluster (simcluster.Cluster) under our own prefix: `with Cluster(16) as c:`
    builds hosts h1..h16 and removes every namespace, sshd and ssh config block again on the way
    out, whatever happened inside (an error, Ctrl-C, a TERM turned into SystemExit)."""

    size: int
    prefix: str = PREFIX

    @property
    def sim(self) -> simcluster.Cluster:
        # The prefix's own state directory (/tmp/<prefix>), whatever HVSIM_DIR says; quiet.
        return simcluster.Cluster(self.prefix, log=lambda line: None)

    def env(self) -> dict[str, str]:
        """The environment of commands run on the hosts."""
        return job_env()

    def hosts(self, n: int) -> list[str]:
        if n > self.size:
            raise ValueError(f"{n} hosts asked for, the cluster has {self.size}")
        return [f"h{i}" for i in range(1, n + 1)]

    def exec_argv(self, host: str, argv: Sequence[str]) -> list[str]:
        """argv run on a simulated host: its namespace, hostname and /etc/hosts."""
        return self.sim.exec_argv(host, argv)

    def run(self, host: str, argv: Sequence[str], timeout_s: float,
            extra_env: Mapping[str, str] | None = None) -> Ran:
        return timed(self.exec_argv(host, argv), timeout_s, {**self.env(), **(extra_env or {})})

    def __enter__(self) -> Cluster:
        try:
            self.sim.up(self.size)  # removes what it built itself when it fails
        except UserError as error:
            raise RuntimeError(f"simcluster up {self.size} failed: {error}") from error
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def down(self) -> None:
        try:
            self.sim.down()
        except (UserError, OSError) as error:
            print(f"bench: simcluster down failed ({error}); run: "
                  f"sudo HVSIM_PREFIX={self.prefix} make cluster-down", file=sys.stderr)


def host_list(hosts: Sequence[str], slots: int = 1) -> str:
    """'h1:1,h2:1': horovodrun's and mpirun's -H."""
    return ",".join(f"{h}:{slots}" for h in hosts)


# --- results -------------------------------------------------------------------------------------

def machine() -> dict:
    """Where a figure was taken: it only means something beside the machine and its load."""
    return {"cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
            "platform": platform.platform(), "load_average": [round(x, 2) for x in
                                                              os.getloadavg()]}


def write_json(name: str, payload: Mapping) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    stamped = {"benchmark": name, "taken": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "machine": machine(), **payload}
    path.write_text(json.dumps(stamped, indent=2) + "\n")
    return path


def new_figure(title: str):
    """A matplotlib figure on the Agg backend (no display needed); import deferred on purpose."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    return fig, ax


def save_figure(name: str, fig) -> Path:
    import matplotlib.pyplot as plt

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def fmt(value: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def verdict(met: bool | None) -> str:
    return "n/a" if met is None else ("[green]met[/]" if met else "[red]missed[/]")
