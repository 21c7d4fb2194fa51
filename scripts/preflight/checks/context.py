"""What the per-host checks read: every host's probe and facts, and the decisions made from
them (the interface, the slots, the launcher whose software the others must match)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..choice import InterfaceChoice
from ..facts import Facts, HostProbe


@dataclass(frozen=True)
class Context:
    probes: Mapping[str, HostProbe]  # every inventory host
    facts: Mapping[str, Facts]  # the hosts whose probe brought facts
    choice: InterfaceChoice
    slots: Mapping[str, int]
    explicit_slots: frozenset[str]  # hosts whose slots the inventory gave
    reference: str | None  # the launcher: this machine if listed, else the first with facts
    timeout_s: float
    mpi: bool = True  # the job (and the MPI check) runs over MPI
    strict_names: bool = False  # Gloo (elastic) or NCCL: ranks are grouped by host name

    @property
    def multi_host(self) -> bool:
        return len(self.probes) > 1
