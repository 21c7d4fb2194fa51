"""Does every host run the same software as the launcher, and was Horovod built right.

Ids:
- `software.versions`: Python (major.minor), TensorFlow, Horovod and its build (MPI, Gloo, NCCL),
  mpi4py and the MPI library agree with the launching host; Horovod is installed and built with
  MPI and Gloo.
"""

from __future__ import annotations

from ..facts import Facts
from ..result import CheckResult, failed, no_facts, passed, warned
from .context import Context

FAMILY = "software"
IDS = ("software.versions",)
STAGE = "host"
REQUIRED_BUILD = ("MPI", "Gloo")
COMPARED_BUILD = ("TensorFlow", "MPI", "Gloo", "NCCL")


def check(host: str, ctx: Context) -> list[CheckResult]:
    f = ctx.facts.get(host)
    if f is None or ctx.reference is None:
        return no_facts(*IDS)
    return [check_versions(host, f, ctx.facts[ctx.reference], ctx.reference)]


def versions(f: Facts) -> dict[str, str | None]:
    """What must agree across hosts, as comparable strings (None: missing)."""
    build = f.horovod_build or {}
    built = ",".join(p for p in COMPARED_BUILD if build.get(p)) if f.horovod_build else None
    return {
        "Python": ".".join(f.python.split(".")[:2]) or None,
        "TensorFlow": f.tensorflow,
        "Horovod": f.packages.get("horovod"),
        "Horovod build": built,
        "mpi4py": f.packages.get("mpi4py"),
        "MPI": f.mpirun,
    }


def check_versions(host: str, f: Facts, reference: Facts, reference_host: str) -> CheckResult:
    """software.versions for `host` against the launcher's facts."""
    mine, theirs = versions(f), versions(reference)
    remedy = f"run make setup on {host}"
    if not mine["Horovod"]:
        return failed("software.versions", f"Horovod is not installed for {f.executable}",
                      remedy)
    if f.horovod_build is not None:
        missing = [p for p in REQUIRED_BUILD if not f.horovod_build.get(p)]
        if missing:
            return failed("software.versions",
                          f"Horovod on {host} was built without {' and '.join(missing)}",
                          f"rebuild Horovod: make setup FORCE=1 on {host}")
    differ = [f"{k} {mine[k] or 'missing'} (launcher {reference_host}: {theirs[k] or 'missing'})"
              for k in mine if mine[k] != theirs[k]]
    if differ:
        return failed("software.versions", "differs from the launcher: " + "; ".join(differ),
                      remedy)
    summary = ", ".join(f"{k} {v}" for k, v in mine.items() if v)
    if f.horovod_build is None:
        return warned("software.versions", summary + "; Horovod build flags unknown",
                      f"record them: run make setup on {host} (it saves horovodrun "
                      "--check-build)")
    return passed("software.versions", summary)
