"""The hosts to check and their slots, from --hosts, an inventory file, or this machine alone
(a Slurm allocation's nodes come from slurm.py, which builds the same Inventory).

An inventory file is an Open MPI hostfile: one `host [slots=N]` per line, `#` comments, blank
lines. This module is the project's one reader and writer of that format (the preflight, make
train and the elastic discovery all use it). Every mistake is an InventoryError naming the line
and the fix; the commands turn it into exit code 2. A name that does not resolve is not a
mistake here: that host fails its `resolve` checks later and the others go on.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError

DEFAULT_HOST = "localhost"
RESOLVE_TIMEOUT_S = 3.0
# Letters, digits, '.', '-', '_', ':' (IPv6); never a leading '-' (ssh would read an option).
_NAME = re.compile(r"^[A-Za-z0-9._:][A-Za-z0-9._:-]*$")
_SLOTS = re.compile(r"^[0-9]+$")


class InventoryError(UserError):
    """Bad input: the message names where and what to do."""


@dataclass(frozen=True)
class Host:
    name: str
    slots: int | None = None  # None: learn it from the host (GPUs, else physical cores)
    where: str = ""  # "line 3" / "--hosts item 2", for messages


@dataclass(frozen=True)
class Origin:
    """Where the hosts came from, as preflight.json records it (provenance.inventory_source)."""
    kind: str  # "hosts" (--hosts), "inventory" (a hostfile), "this machine", "slurm"
    details: tuple[tuple[str, str | int], ...] = ()  # e.g. ("path", "hosts.txt")

    def as_dict(self) -> dict:
        return {"kind": self.kind, **dict(self.details)}

    def plus(self, **details: str | int) -> Origin:
        return Origin(self.kind, self.details + tuple(details.items()))


@dataclass(frozen=True)
class Inventory:
    hosts: tuple[Host, ...]
    source: str  # "--hosts", a file path, "default (this machine)", "Slurm job 7 (h[1-2], ...)"
    origin: Origin = Origin("inventory")

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    @property
    def slots(self) -> int:
        """All slots; a host without slots= counts one, as mpirun counts it."""
        return sum(h.slots or 1 for h in self.hosts)

    def rank_hosts(self) -> list[str]:
        """The host of each rank as mpirun places them by default: slots filled in order."""
        return [h.name for h in self.hosts for _ in range(h.slots or 1)]


def hostfile_text(hosts: Sequence[tuple[str, int]]) -> str:
    """(host, slots) pairs as hostfile lines, `host slots=N` and nothing else: horovodrun's
    --hostfile accepts no comments or blank lines."""
    return "".join(f"{name} slots={slots}\n" for name, slots in hosts)


def discovery_text(inventory: Inventory) -> str:
    """`host:slots` lines, the format of horovodrun's --host-discovery-script."""
    return "".join(f"{h.name}:{h.slots or 1}\n" for h in inventory.hosts)


Resolver = Callable[[str], "set[str]"]


def check_name(name: str, where: str) -> str:
    """The host name, stripped of IPv6 brackets, if it is safe to hand to ssh and mpirun."""
    bare = name[1:-1] if name.startswith("[") and name.endswith("]") else name
    if not bare or not _NAME.match(bare):
        raise InventoryError(
            f"{where}: bad host name {name!r}: use only letters, digits, '.', '-', '_', ':' "
            "and do not start with '-'")
    return bare


def parse_slots(text: str, host: str, where: str) -> int:
    if not _SLOTS.match(text) or int(text) == 0:
        raise InventoryError(
            f"{where}: slots={text!r} for {host}: slots must be a whole number of at least 1, "
            f"e.g. '{host} slots=2'")
    return int(text)


def parse_hostfile(text: str, source: str) -> Inventory:
    """Open MPI hostfile text: `host`, or `host slots=N`, per line."""
    hosts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            hosts.append(parse_hostfile_line(line, f"{source} line {number}"))
    if not hosts:
        raise InventoryError(f"{source}: no hosts in the inventory; add lines like 'h1 slots=2'")
    return Inventory(tuple(hosts), source, Origin("inventory", (("path", source),)))


def parse_hostfile_line(line: str, where: str) -> Host:
    name, *pairs = line.split()
    name = check_name(name, where)
    slots = None
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if key != "slots" or not sep:
            raise InventoryError(
                f"{where}: unknown entry {pair!r}: only 'slots=N' may follow the host name")
        if slots is not None:
            raise InventoryError(f"{where}: slots given twice for {name}; keep one 'slots=N'")
        slots = parse_slots(value, name, where)
    return Host(name, slots, where)


def parse_hosts_arg(text: str) -> Inventory:
    """--hosts "h1:2,h2,[fe80::1]:4": comma-separated `host[:slots]`."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise InventoryError("--hosts is empty; give hosts like --hosts 'h1:2,h2:2'")
    hosts = []
    for index, item in enumerate(items, start=1):
        where = f"--hosts item {index}"
        if not item:
            raise InventoryError(f"{where} is empty; remove the extra ','")
        name, slots = split_host_slots(item, where)
        hosts.append(Host(check_name(name, where),
                          None if slots is None else parse_slots(slots, name, where), where))
    return Inventory(tuple(hosts), "--hosts", Origin("hosts"))


def split_host_slots(item: str, where: str) -> tuple[str, str | None]:
    if item.startswith("["):  # [IPv6]:slots
        name, sep, rest = item.partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise InventoryError(f"{where}: {item!r}: write IPv6 hosts as [addr] or [addr]:slots")
        return name + "]", rest[1:] if rest else None
    if item.count(":") == 1:
        name, slots = item.split(":")
        return name, slots
    return item, None  # no slots, or a bare IPv6 address


def default_inventory() -> Inventory:
    return Inventory((Host(DEFAULT_HOST, None, "default"),), "default (this machine)",
                     Origin("this machine"))


def load(hosts: str | None, path: str | None) -> Inventory:
    if hosts is not None:
        return parse_hosts_arg(hosts)
    if path is not None:
        return read_hostfile(path)
    return default_inventory()


def read_hostfile(path: str | Path, what: str = "the inventory") -> Inventory:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryError(f"cannot read {what} {path}: {exc}; check the path") from exc
    return parse_hostfile(text, str(path))


def resolve_locally(name: str) -> set[str]:
    try:
        return {info[4][0] for info in socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)}
    except (OSError, UnicodeError):
        return set()


def check_duplicates(inventory: Inventory, resolver: Resolver | None = None,
                     timeout_s: float = RESOLVE_TIMEOUT_S) -> None:
    """Rejects a host listed twice, by the same name or by a name and an address of it."""
    resolver = resolver or resolve_locally
    seen: dict[str, Host] = {}
    for host in inventory.hosts:
        key = host.name.lower()
        if key in seen:
            raise InventoryError(
                f"{host.where}: {host.name} is listed twice (also {seen[key].where}); "
                "list each host once")
        seen[key] = host
    addresses = resolve_all([h.name for h in inventory.hosts], resolver, timeout_s)
    owner: dict[str, Host] = {}
    for host in inventory.hosts:
        for address in sorted(addresses.get(host.name, set())):
            first = owner.setdefault(normal(address), host)
            if first is not host:
                raise InventoryError(
                    f"{host.where}: {host.name} is the same host as {first.name} "
                    f"({first.where}), both are {address}; list each host once")


def resolve_all(names: Sequence[str], resolver: Resolver, timeout_s: float) -> dict[str, set]:
    """Names resolved concurrently; a name still resolving at the deadline counts as unknown."""
    pool = ThreadPoolExecutor(max_workers=min(32, max(1, len(names))))
    futures = {name: pool.submit(resolver, name) for name in names}
    wait(futures.values(), timeout=timeout_s)
    pool.shutdown(wait=False, cancel_futures=True)
    return {name: f.result() for name, f in futures.items() if f.done() and not f.exception()}


def normal(address: str) -> str:
    try:
        return str(ipaddress.ip_address(address.split("%")[0]))
    except ValueError:
        return address
