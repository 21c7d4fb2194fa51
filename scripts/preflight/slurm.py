"""A Slurm allocation as the preflight's inventory, read from the job's environment alone.

Inside an allocation (salloc, sbatch, srun) Slurm sets SLURM_JOB_NODELIST, e.g. 'gpu[01-04],b7'.
Its nodes are expanded as `scontrol show hostnames` does (ranges, several bracket groups, zero
padding: 'a[1-3,5],b7' -> a1 a2 a3 a5 b7) by python-hostlist, so that neither a Slurm client nor
the controller is needed. The names are Slurm's node names: the preflight reaches them by ssh as
it does any host, so they must resolve (they do where NodeName is the hostname, the usual case).

Slots per node, from the first of these that the job's environment has:
1. SLURM_TASKS_PER_NODE ('2(x3),1': a count per node in node-list order, '(xN)' repeating it N
   times). Open MPI's mpirun reads this variable for its slots inside an allocation and refuses
   more ranks than it allows, so it wins over what the node has. Slurm sets it for every
   allocation, from --ntasks/--ntasks-per-node or, without them, from the CPUs the job got: for
   one rank per GPU ask for it, e.g. `--ntasks-per-node=4 --gpus-per-node=4`.
2. One slot per GPU, where the job asked for GPUs: SLURM_GPUS_ON_NODE, else the number of
   SLURM_JOB_GPUS ('0,1,2,3'), else SLURM_GPUS_PER_NODE ('[type:]N'). These describe the node
   the preflight runs on; every node gets the same.
3. SLURM_JOB_CPUS_PER_NODE (the format of 1): the CPUs the job holds on each node.
4. None of them: the host's own default (its GPUs, else its physical cores), as for --hosts.

A count list that does not match the node list is a UserError naming both variables: both come
from the same job, so a mismatch means an environment copied from another job or made by hand.

Precedence (preflight.__main__): hosts given with --hosts or --inventory win over the
allocation, with a note that says so; no hosts given and SLURM_JOB_NODELIST set: the allocation;
else this machine. `exclude_option` turns the hosts that failed into the `--exclude=` option for
the next submission; `python -m preflight.slurm exclude [REPORT]` prints it from a report.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType

from .errors import Exit, UserError, render
from .inventory import Host, Inventory, Origin, check_name
from .report import read_report

NODELIST = "SLURM_JOB_NODELIST"
TASKS = "SLURM_TASKS_PER_NODE"
CPUS = "SLURM_JOB_CPUS_PER_NODE"
GPU_VARIABLES = ("SLURM_GPUS_ON_NODE", "SLURM_JOB_GPUS", "SLURM_GPUS_PER_NODE")
HOSTLIST_PIN = "python-hostlist==2.3.0"
_COUNT = re.compile(r"^([0-9]+)(?:\(x([0-9]+)\))?$")  # '2' or '2(x3)'


@dataclass(frozen=True)
class Job:
    """The allocation the preflight runs in, as Slurm wrote it."""
    job_id: str  # "" where the environment has no job id
    nodelist: str  # compressed, e.g. 'h[1-3]'

    @property
    def name(self) -> str:
        return f"Slurm job {self.job_id}" if self.job_id else "the Slurm allocation"


@dataclass(frozen=True)
class Slots:
    counts: tuple[int | None, ...]  # per node; None: the host decides
    source: str  # the variable they came from, "" for none


def job(environ: Mapping[str, str]) -> Job | None:
    """The allocation we run in, or None outside one. Reads two variables, parses nothing: a
    broken count list must not stop a run whose hosts were given explicitly."""
    nodelist = environ.get(NODELIST, "").strip()
    if not nodelist:
        return None
    return Job(environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID") or "", nodelist)


def inventory(found: Job, environ: Mapping[str, str]) -> Inventory:
    """The allocation's nodes and slots as the preflight's inventory."""
    nodes = expand(found.nodelist)
    slots = node_slots(environ, len(nodes), found.nodelist)
    hosts = tuple(Host(name, count, f"{NODELIST} node {index}")
                  for index, (name, count) in enumerate(zip(nodes, slots.counts), start=1))
    unit = "node" if len(nodes) == 1 else "nodes"
    origin = Origin("slurm", (("job_id", found.job_id), ("nodelist", found.nodelist),
                              ("nodes", len(nodes)), ("slots_from", slots.source)))
    return Inventory(hosts, f"{found.name} ({found.nodelist}, {len(nodes)} {unit})", origin)


def passed_over(given: Inventory, found: Job) -> tuple[Inventory, str]:
    """Hosts given explicitly inside an allocation: they are checked, and the report and one
    line say that the allocation's nodes were not. Someone who names hosts inside a job means
    them (make train's HOSTFILE, a subset after a failure); mixing in the allocation's nodes
    would check hosts nobody asked for."""
    what = "--hosts" if given.origin.kind == "hosts" else f"--inventory {given.source}"
    note = (f"note: checking {what}, not the nodes of {found.name} ({found.nodelist}): hosts "
            "given explicitly win; inside the job mpirun starts ranks on its nodes only")
    ignored = given.origin.plus(slurm_job_ignored=found.job_id,
                                slurm_nodelist_ignored=found.nodelist)
    return Inventory(given.hosts, given.source, ignored), note


def _hostlist() -> ModuleType:
    """python-hostlist, imported only inside an allocation: outside one the preflight runs
    without it (a venv older than this module's pin)."""
    try:
        import hostlist
    except ImportError as exc:
        raise UserError(f"cannot read {NODELIST}: python-hostlist is not installed",
                        f"run make setup (or pip install {HOSTLIST_PIN})") from exc
    return hostlist


def expand(nodelist: str) -> list[str]:
    """'a[1-3,5],b7' -> ['a1', 'a2', 'a3', 'a5', 'b7'], as `scontrol show hostnames`."""
    hostlist = _hostlist()
    try:
        names = hostlist.expand_hostlist(nodelist)
    except hostlist.BadHostlist as exc:
        raise UserError(f"{NODELIST}={nodelist!r} is not a Slurm node list ({exc})",
                        "run inside the job's own environment, or give --hosts") from exc
    if not names:
        raise UserError(f"{NODELIST}={nodelist!r} names no node", "give --hosts")
    return [check_name(name, f"{NODELIST} node {i}") for i, name in enumerate(names, start=1)]


def exclude_value(hosts: Iterable[str]) -> str:
    """The hosts as one compressed Slurm host list: ['h3', 'h1'] -> 'h[1,3]'."""
    return _hostlist().collect_hostlist(list(hosts))


def exclude_option(hosts: Iterable[str]) -> str | None:
    """`--exclude=h[1,3]` for the next sbatch/salloc; None when no host failed."""
    names = list(hosts)
    return f"--exclude={exclude_value(names)}" if names else None


def failed_hosts(report: Mapping) -> list[str]:
    """The hosts a preflight.json document marks as not ok, in its order."""
    return [h["host"] for h in report.get("hosts", []) if not h.get("ok")]


# --- slots -----------------------------------------------------------------------------------

def node_slots(environ: Mapping[str, str], nodes: int, nodelist: str) -> Slots:
    """Slots per node, in the order of preference of the module's docstring."""
    if environ.get(TASKS):
        return Slots(per_node(environ[TASKS], TASKS, nodes, nodelist), TASKS)
    gpus = gpus_per_node(environ)
    if gpus is not None:
        return Slots((gpus[0],) * nodes, gpus[1])
    if environ.get(CPUS):
        return Slots(per_node(environ[CPUS], CPUS, nodes, nodelist), CPUS)
    return Slots((None,) * nodes, "")


def per_node(text: str, variable: str, nodes: int, nodelist: str) -> tuple[int, ...]:
    counts = parse_counts(text, variable)
    if len(counts) != nodes:
        raise UserError(
            f"{variable}={text!r} gives counts for {len(counts)} node(s) but "
            f"{NODELIST}={nodelist!r} has {nodes}",
            "both come from one job: run inside the job's own environment (not one copied "
            "from another job), or give the hosts with --hosts")
    return tuple(counts)


def parse_counts(text: str, variable: str) -> list[int]:
    """'2(x3),1' -> [2, 2, 2, 1]: Slurm's per-node counts, '(xN)' repeating one N times."""
    counts: list[int] = []
    for item in text.split(","):
        match = _COUNT.match(item.strip())
        if not match or int(match[1]) < 1 or int(match[2] or 1) < 1:
            raise UserError(f"{variable}={text!r}: cannot read {item!r}",
                            "expected counts of at least 1 like '2(x3),1'; unset it or give "
                            "--hosts")
        counts += [int(match[1])] * int(match[2] or 1)
    return counts


def gpus_per_node(environ: Mapping[str, str]) -> tuple[int, str] | None:
    """(GPUs, the variable) where the job asked for GPUs; None where it did not."""
    for variable in GPU_VARIABLES:
        text = environ.get(variable, "").strip()
        count = count_gpus(variable, text) if text else 0
        if count:
            return count, variable
    return None


def count_gpus(variable: str, text: str) -> int:
    """'4' (SLURM_GPUS_ON_NODE), '0,1,2,3' (SLURM_JOB_GPUS), 'a100:4' (SLURM_GPUS_PER_NODE)."""
    try:
        if variable == "SLURM_JOB_GPUS":
            return len([i for i in text.split(",") if i.strip()])
        return sum(int(item.rsplit(":", 1)[-1]) for item in text.split(","))
    except ValueError:
        raise UserError(f"{variable}={text!r}: cannot read a GPU count",
                        "unset it or give the hosts with --hosts 'h1:4,h2:4'") from None


# --- python -m preflight.slurm exclude [REPORT] -------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m preflight.slurm",
        description="Print the --exclude= option that leaves out the hosts a preflight report "
                    "marks as failed (nothing when none failed), for the next sbatch/salloc.")
    p.add_argument("action", choices=["exclude"])
    p.add_argument("report", nargs="?", default="preflight.json")
    args = p.parse_args(argv)
    try:
        option = exclude_option(failed_hosts(read_report(args.report)))
    except UserError as exc:
        return render("preflight.slurm", exc)
    if option:
        print(option)
    return Exit.OK


if __name__ == "__main__":
    sys.exit(main())
