"""`make submit` (python -m preflight.submit): sbatch template/train.sbatch, and how to follow it.

Variables (environment): NODES (default 3), TASKS_PER_NODE (default 1: one rank per node; give
the GPUs per node on GPU nodes), TIME (default 01:00:00), PARTITION, EXCLUDE (nodes to leave
out, e.g. h[2-3], as the last job's log suggests), OUT (runs: the job's log goes to
OUT/slurm-<job>.out). The training variables (EPOCHS, DATA, ...) reach the job through sbatch's
environment. Prints the job id, where its log is and the commands to follow it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from .errors import UserError, render
from .launch.config import ROOT, whole
from .proc import run

PROG = "make submit"
SBATCH_TIMEOUT_S = 60


def sbatch_argv(env: dict[str, str], sbatch: str) -> tuple[list[str], Path]:
    """sbatch's command line and the job's log pattern, from make's variables."""
    def get(name: str, default: str = "") -> str:
        return env.get(name) or default

    nodes = whole("NODES", get("NODES", "3"))
    tasks = whole("TASKS_PER_NODE", get("TASKS_PER_NODE", "1"))
    out = Path(get("OUT", "runs"))
    log = out.resolve() / "slurm-%j.out"
    argv = [sbatch, "--parsable", f"--nodes={nodes}", f"--ntasks-per-node={tasks}",
            f"--time={get('TIME', '01:00:00')}", f"--output={log}", f"--chdir={ROOT}"]
    argv += [f"--partition={get('PARTITION')}"] if get("PARTITION") else []
    argv += [f"--exclude={get('EXCLUDE')}"] if get("EXCLUDE") else []
    return argv + [str(ROOT / "template" / "train.sbatch")], log


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m preflight.submit", description=__doc__,
                            formatter_class=argparse.RawDescriptionHelpFormatter
                            ).parse_args(argv)
    try:
        sbatch = shutil.which("sbatch")
        if sbatch is None:
            raise UserError("no sbatch here", "run make submit on a Slurm login node (or "
                            "make cluster-up SLURM=1, then make slurm CMD='make submit')")
        command, log = sbatch_argv(dict(os.environ), sbatch)
        log.parent.mkdir(parents=True, exist_ok=True)  # sbatch does not make the folder
        done = run(command, SBATCH_TIMEOUT_S)
        if done.returncode != 0:
            raise UserError(f"sbatch refused the job: {done.stderr.strip() or done.stdout}",
                            "check NODES, TIME, PARTITION and EXCLUDE against sinfo")
    except UserError as error:
        return render(PROG, error)
    job = done.stdout.strip().split(";")[0]
    print(f"{PROG}: job {job} submitted; log {str(log).replace('%j', job)}\n"
          f"  follow it: tail -f {str(log).replace('%j', job)}   state: squeue -j {job}   "
          f"stop it: scancel {job}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
