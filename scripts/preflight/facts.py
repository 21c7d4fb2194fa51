"""A typed view of the host probe's JSON (agents/host_probe.py): what the checks read instead of
raw dictionaries, and `HostProbe`, one host's probe run with the facts it brought."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Union

from .proc import Ran

IpInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]
IpAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


@dataclass(frozen=True)
class Interface:
    name: str
    ipv4: tuple[ipaddress.IPv4Interface, ...] = ()
    ipv6: tuple[ipaddress.IPv6Interface, ...] = ()
    mac: str | None = None
    mtu: int = 0
    speed: int = 0  # Mbit/s, 0 when unknown
    isup: bool = False
    loopback: bool = False
    virtual: bool = False
    bridge: bool = False

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Interface:
        return cls(
            name=d["name"],
            ipv4=tuple(i for i in _interfaces(d.get("ipv4", ())) if i.version == 4),
            ipv6=tuple(i for i in _interfaces(d.get("ipv6", ())) if i.version == 6),
            mac=d.get("mac"), mtu=int(d.get("mtu") or 0), speed=int(d.get("speed") or 0),
            isup=bool(d.get("isup")), loopback=bool(d.get("loopback")),
            virtual=bool(d.get("virtual")), bridge=bool(d.get("bridge")),
        )

    @property
    def kind(self) -> str:
        if self.loopback:
            return "loopback"
        return "bridge" if self.bridge else ("virtual" if self.virtual else "physical")

    def addresses(self) -> str:
        """Every address with its class: '10.0.0.5/24 (private) fe80::1/64 (link-local)'."""
        return " ".join(f"{a} ({address_class(a.ip)})" for a in (*self.ipv4, *self.ipv6))

    def summary(self) -> str:
        parts = [f"{self.name} {self.addresses() or 'no address'}",
                 f"mac {self.mac}" if self.mac else "", f"mtu {self.mtu}", speed_text(self.speed),
                 "up" if self.isup else "down", self.kind]
        return ", ".join(p for p in parts if p)


def address_class(ip: IpAddress) -> str:
    """What kind of address: the classes that decide whether a job may use it."""
    if ip.is_loopback:
        return "loopback"
    if ip.is_link_local:
        return "link-local"
    if ip.is_private:
        return "private"
    return "public" if ip.is_global else "reserved"


def speed_text(mbit_s: int) -> str:
    if not mbit_s:
        return "speed unknown"
    return f"{mbit_s / 1000:g} Gb/s" if mbit_s >= 1000 else f"{mbit_s} Mb/s"


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return bool(self.addresses)

    @property
    def loopback(self) -> tuple[str, ...]:
        return tuple(a for a in self.addresses if ipaddress.ip_address(a).is_loopback)


@dataclass(frozen=True)
class Neighbour:
    address: str
    dev: str | None
    mac: str | None
    state: tuple[str, ...] = ()


@dataclass(frozen=True)
class FoundModule:
    """Where `import NAME` loads a module from on the host, as the job's processes would."""

    path: str
    entry: str  # the sys.path entry that holds it
    from_pythonpath: bool  # that entry came from the host's PYTHONPATH
    version: str | None


@dataclass(frozen=True)
class MpiDaemon:
    """Open MPI's remote daemon (orted) as a non-interactive ssh session finds it."""

    name: str
    path: str | None
    runs: bool
    error: str | None


@dataclass(frozen=True)
class SessionDir:
    """Where Open MPI makes its session directory on the host, as its ssh sessions see it."""

    path: str
    source: str  # TMPDIR, TEMP, TMP or default (/tmp)
    writable: bool
    free: int | None
    error: str | None


@dataclass(frozen=True)
class Facts:
    hostname: str
    fqdn: str
    time: float
    python: str
    executable: str
    prefix: str
    packages: dict[str, str | None]
    horovod_build: dict[str, bool] | None
    mpirun: str | None
    interfaces: tuple[Interface, ...]
    resolved: dict[str, Resolution]
    physical_cores: int | None
    logical_cores: int | None
    gpus: int | None
    memory_total: int | None
    memory_available: int | None
    project: str
    disk_free: int | None
    shm_total: int | None
    shm_free: int | None
    venv_python: str
    venv_python_exists: bool
    script: str
    script_exists: bool
    neighbours: tuple[Neighbour, ...] | None = None
    modules: dict[str, FoundModule | None] | None = None  # None: an older probe's facts
    mpi_daemon: MpiDaemon | None = None
    pythonpath: str | None = None
    session_dir: SessionDir | None = None  # None: an older probe's facts
    missing_libraries: dict[str, tuple[str, ...]] | None = None
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Facts:
        resolved = {name: Resolution(tuple(r.get("addresses") or ()), r.get("error"))
                    for name, r in (d.get("resolved") or {}).items()}
        neigh = d.get("neighbours")
        modules, daemon = d.get("modules"), d.get("mpi_daemon")
        return cls(
            hostname=d["hostname"], fqdn=d.get("fqdn") or d["hostname"], time=float(d["time"]),
            python=d.get("python", ""), executable=d.get("executable", ""),
            prefix=d.get("prefix", ""), packages=dict(d.get("packages") or {}),
            horovod_build=d.get("horovod_build"), mpirun=d.get("mpirun"),
            interfaces=tuple(Interface.from_dict(i) for i in d.get("interfaces", ())),
            resolved=resolved,
            physical_cores=d.get("physical_cores"), logical_cores=d.get("logical_cores"),
            gpus=d.get("gpus"), memory_total=d.get("memory_total"),
            memory_available=d.get("memory_available"), project=d.get("project", ""),
            disk_free=d.get("disk_free"), shm_total=d.get("shm_total"),
            shm_free=d.get("shm_free"), venv_python=d.get("venv_python", ""),
            venv_python_exists=bool(d.get("venv_python_exists")), script=d.get("script", ""),
            script_exists=bool(d.get("script_exists")),
            neighbours=None if neigh is None else tuple(
                Neighbour(n["address"], n.get("dev"), n.get("mac"), tuple(n.get("state") or ()))
                for n in neigh),
            modules=None if modules is None else {
                name: FoundModule(**m) if m else None for name, m in modules.items()},
            mpi_daemon=MpiDaemon(**daemon) if daemon else None,
            pythonpath=d.get("pythonpath"),
            session_dir=SessionDir(**d["session_dir"]) if d.get("session_dir") else None,
            missing_libraries=None if d.get("missing_libraries") is None else {
                k: tuple(v) for k, v in d["missing_libraries"].items()},
            raw=d,
        )

    @classmethod
    def from_json(cls, text: str) -> Facts:
        return cls.from_dict(json.loads(text))

    @property
    def default_slots(self) -> int:
        """GPUs where there are any, else physical cores (one process per core), at least 1."""
        if self.gpus:
            return self.gpus
        return self.physical_cores or self.logical_cores or 1

    @property
    def tensorflow(self) -> str | None:
        return self.packages.get("tensorflow") or self.packages.get("tensorflow-cpu")

    def interface(self, name: str) -> Interface | None:
        return next((i for i in self.interfaces if i.name == name), None)

    def resolution(self, name: str) -> Resolution | None:
        return self.resolved.get(name)


def _interfaces(texts: Any) -> list[IpInterface]:
    result = []
    for text in texts:
        try:
            result.append(ipaddress.ip_interface(text))
        except ValueError:
            continue
    return result


@dataclass(frozen=True)
class HostProbe:
    """The host probe's run on one host: how it went (None: never sent), the facts it printed
    (None: none could be read, `error` says why), and the launcher's clock around it."""

    host: str
    local: bool  # this machine: run without ssh
    result: Ran | None
    facts: Facts | None
    error: str | None
    sent: float  # launcher time.time() before the request
    received: float  # and after the answer
    first: Ran | None = None  # the first attempt, where `result` is from a second one
