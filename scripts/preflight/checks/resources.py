"""Has each host the room for its processes: slots, memory, disk, shared memory, the project.

Ids:
- `resources.slots`: at least one slot; more slots than logical cores warns (oversubscribed).
- `resources.memory`: available memory per slot at least MEMORY_PER_SLOT_WARN.
- `resources.disk`: free space where the project lives (checkpoints, logs) at least DISK_WARN;
  below DISK_FAIL fails.
- `resources.shm`: /dev/shm (MPI's shared-memory transport between local ranks) at least
  SHM_WARN in size.
- `resources.paths`: the venv's Python and the training script exist on the host at the same
  path as on the launcher (horovodrun starts the same command line everywhere).
"""

from __future__ import annotations

from ..facts import Facts
from ..result import CheckResult, failed, no_facts, passed, warned
from .context import Context

FAMILY = "resources"
IDS = ("resources.slots", "resources.memory", "resources.disk", "resources.shm",
       "resources.paths")
STAGE = "host"
GiB = 1024**3
MiB = 1024**2
MEMORY_PER_SLOT_WARN = 1 * GiB
DISK_WARN = 2 * GiB
DISK_FAIL = 200 * MiB
SHM_WARN = 256 * MiB


def check(host: str, ctx: Context) -> list[CheckResult]:
    f = ctx.facts.get(host)
    if f is None:
        return no_facts(*IDS)
    slots = ctx.slots[host]
    return [check_slots(host, slots, f, host in ctx.explicit_slots),
            check_memory(host, slots, f), check_disk(host, f), check_shm(host, f),
            check_paths(host, f)]


def check_slots(host: str, slots: int, f: Facts, from_inventory: bool) -> CheckResult:
    if slots < 1:
        return failed("resources.slots", f"{slots} slots",
                      f"give {host} at least one slot: '{host} slots=1'")
    cores = f.logical_cores or 0
    source = "inventory" if from_inventory else ("GPUs" if f.gpus else "physical cores")
    if cores and slots > cores:
        return warned("resources.slots",
                      f"{slots} slots on {cores} logical cores: oversubscribed",
                      f"lower slots for {host} to {cores} or fewer in the inventory")
    return passed("resources.slots",
                  f"{slots} slots ({source}); {f.physical_cores} cores, {cores} threads"
                  + (f", {f.gpus} GPUs" if f.gpus else ""))


def check_memory(host: str, slots: int, f: Facts) -> CheckResult:
    if f.memory_available is None:
        return passed("resources.memory", "not measured")
    per_slot = f.memory_available / max(slots, 1)
    detail = (f"{gib(f.memory_available)} available of {gib(f.memory_total)}, "
              f"{gib(per_slot)} per slot")
    if per_slot < MEMORY_PER_SLOT_WARN:
        return warned("resources.memory", detail,
                      f"free memory on {host} or lower its slots (want "
                      f"{gib(MEMORY_PER_SLOT_WARN)} per slot)")
    return passed("resources.memory", detail)


def check_disk(host: str, f: Facts) -> CheckResult:
    if f.disk_free is None:
        return passed("resources.disk", "not measured")
    detail = f"{gib(f.disk_free)} free at {f.project}"
    remedy = f"free space under {f.project} on {host} (want {gib(DISK_WARN)})"
    if f.disk_free < DISK_FAIL:
        return failed("resources.disk", detail, remedy)
    if f.disk_free < DISK_WARN:
        return warned("resources.disk", detail, remedy)
    return passed("resources.disk", detail)


def check_shm(host: str, f: Facts) -> CheckResult:
    remedy = (f"enlarge /dev/shm on {host}: sudo mount -o remount,size=1G /dev/shm "
              "(in Docker: --shm-size=1g)")
    if f.shm_total is None:
        return warned("resources.shm", "no /dev/shm", remedy)
    detail = f"/dev/shm {gib(f.shm_total)}, {gib(f.shm_free or 0)} free"
    if f.shm_total < SHM_WARN:
        return warned("resources.shm", detail, remedy)
    return passed("resources.shm", detail)


def check_paths(host: str, f: Facts) -> CheckResult:
    missing = [p for p, ok in ((f.venv_python, f.venv_python_exists),
                               (f.script, f.script_exists)) if not ok]
    if missing:
        return failed("resources.paths", f"missing on {host}: {', '.join(missing)}",
                      f"clone the project to the same path on {host} and run make setup there")
    return passed("resources.paths", f"{f.venv_python} and {f.script} present")


def gib(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / GiB:.1f} GiB" if n >= GiB else f"{n / MiB:.0f} MiB"
