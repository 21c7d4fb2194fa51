"""The one result shape every check returns, and the reports built from them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Status(str, Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


@dataclass(frozen=True)
class CheckResult:
    """One check on one host: a stable dotted id, a status, what was seen, and what to do."""

    id: str
    status: Status
    detail: str
    remedy: str = ""

    def __post_init__(self) -> None:
        # A warning or failure nobody can act on is noise: insist on a remedy.
        if self.status in (Status.WARN, Status.FAIL) and not self.remedy:
            raise ValueError(f"{self.id}: a {self.status.value} needs a remedy")

    @property
    def family(self) -> str:
        return self.id.split(".", 1)[0]

    def as_dict(self) -> dict[str, str]:
        return {"id": self.id, "status": self.status.value, "detail": self.detail,
                "remedy": self.remedy}


def passed(check_id: str, detail: str) -> CheckResult:
    return CheckResult(check_id, Status.PASS, detail)


def warned(check_id: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(check_id, Status.WARN, detail, remedy)


def failed(check_id: str, detail: str, remedy: str) -> CheckResult:
    return CheckResult(check_id, Status.FAIL, detail, remedy)


def skipped(check_id: str, detail: str) -> CheckResult:
    return CheckResult(check_id, Status.SKIP, detail)


def no_facts(*check_ids: str) -> list[CheckResult]:
    """The checks that need a host's own facts, skipped because its probe brought none."""
    return [skipped(i, "no facts from this host") for i in check_ids]


@dataclass(frozen=True)
class HostReport:
    host: str
    address: str | None
    slots: int
    checks: tuple[CheckResult, ...] = ()
    interface: str | None = None  # this host's name for the chosen interface

    @property
    def ok(self) -> bool:
        return all(c.status is not Status.FAIL for c in self.checks)

    def family_status(self, family: str) -> Status | None:
        """The worst status among this host's checks of one family (None if it has none)."""
        order = [Status.FAIL, Status.WARN, Status.PASS, Status.SKIP]
        seen = {c.status for c in self.checks if c.family == family}
        return next((s for s in order if s in seen), None)

    def as_dict(self) -> dict:
        return {"host": self.host, "address": self.address, "slots": self.slots, "ok": self.ok,
                "interface": self.interface, "checks": [c.as_dict() for c in self.checks]}


@dataclass(frozen=True)
class Report:
    hosts: tuple[HostReport, ...]
    interface: str | None
    interface_cidr: str | None = None
    provenance: dict = field(default_factory=dict)

    @property
    def healthy(self) -> tuple[HostReport, ...]:
        return tuple(h for h in self.hosts if h.ok)

    @property
    def ok(self) -> bool:
        return bool(self.hosts) and all(h.ok for h in self.hosts)

    @property
    def np(self) -> int:
        return sum(h.slots for h in self.healthy)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "interface": self.interface, "interface_cidr": self.interface_cidr,
                "np": self.np, "hosts": [h.as_dict() for h in self.hosts],
                "provenance": self.provenance}
