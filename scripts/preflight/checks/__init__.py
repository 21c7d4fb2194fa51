"""The verdicts: pure functions from what was seen to CheckResults, one module per family.

Each family module declares FAMILY (its name and column in the report), IDS (every id it emits,
each documented in its docstring and in the README), STAGE and one entry point:
- "host" families judge one host from the probes and facts: `check(host, ctx) -> [CheckResult]`
  (ctx: checks.context.Context); the pipeline calls them in FAMILIES order.
- "active" families judge what the runners in preflight/active/ saw between hosts (mesh.tcp,
  mtu.path, loss.path, mpi.*); their runners call them.
This registry is the one list of families and ids: the pipeline, the report's columns and the
documentation test read it. blame.py (who is to blame for failing pairs) is shared, not a family.
"""

from __future__ import annotations

from types import ModuleType

from . import clock, interface, loss, mesh, mpi, mtu, resolve, resources, software, ssh

# In the report's column order.
FAMILIES: tuple[ModuleType, ...] = (ssh, resolve, interface, mesh, mtu, loss, software,
                                    resources, clock, mpi)
HOST_FAMILIES = tuple(f for f in FAMILIES if f.STAGE == "host")


def family_names() -> tuple[str, ...]:
    return tuple(f.FAMILY for f in FAMILIES)


def all_ids() -> tuple[str, ...]:
    return tuple(i for f in FAMILIES for i in f.IDS)
