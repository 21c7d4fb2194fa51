"""The decision: which interface the job uses, the one subnet through which every host reaches
every other.

The choice, a pure function of the probes' facts: candidate subnets come from every up,
non-loopback IPv4 interface of every host. A subnet where two hosts hold the same address is a
decoy (docker0 is 172.17.0.1/16 everywhere) and is dropped, as is link-local. The subnet reached
by the most hosts wins; ties go to the subnet holding the addresses the host names resolve to,
then to physical over virtual interfaces, then to non-bridges, then to faster links, then to
private addresses. One host alone uses loopback. Interface names may differ between hosts:
Open MPI takes the CIDR, Gloo and NCCL take the per-host names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .facts import Facts, Interface

LOOPBACK_CIDR = "127.0.0.0/8"
LOOPBACK_IF = "lo"


@dataclass(frozen=True)
class Member:
    """One host's foothold in a subnet."""

    host: str
    interface: Interface
    address: ipaddress.IPv4Interface


@dataclass(frozen=True)
class Candidate:
    network: ipaddress.IPv4Network
    members: tuple[Member, ...]  # at most one per host

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(m.host for m in self.members)

    @property
    def shared_addresses(self) -> tuple[str, ...]:
        """Addresses held by more than one host: the mark of a per-host bridge like docker0."""
        seen: dict[str, int] = {}
        for m in self.members:
            seen[str(m.address.ip)] = seen.get(str(m.address.ip), 0) + 1
        return tuple(a for a, n in seen.items() if n > 1)

    def names(self) -> str:
        return "/".join(dict.fromkeys(m.interface.name for m in self.members))


@dataclass(frozen=True)
class InterfaceChoice:
    cidr: str | None
    names: dict[str, str] = field(default_factory=dict)  # host -> interface name
    addresses: dict[str, str] = field(default_factory=dict)  # host -> address in the subnet
    mtus: dict[str, int] = field(default_factory=dict)
    reach: int = 0  # hosts in the chosen subnet
    of: int = 0  # hosts considered
    passed_over: tuple[tuple[str, frozenset[str]], ...] = ()  # (why, hosts it concerns)

    @property
    def interface(self) -> str | None:
        """The interface name, or the names comma-joined where hosts name it differently."""
        distinct = list(dict.fromkeys(self.names.values()))
        return ",".join(distinct) if distinct else None

    @property
    def names_differ(self) -> bool:
        return len(set(self.names.values())) > 1

    def passed_over_for(self, host: str | None = None) -> list[str]:
        return [why for why, hosts in self.passed_over if host is None or host in hosts]


def candidates(facts: Mapping[str, Facts]) -> list[Candidate]:
    """Every subnet that some up, non-loopback, non-link-local IPv4 address lies in."""
    networks: dict[ipaddress.IPv4Network, None] = {}
    for f in facts.values():
        for _, addr in usable(f):
            networks.setdefault(addr.network)
    result = []
    for network in networks:
        members = []
        for host, f in facts.items():
            inside = [(i, a) for i, a in usable(f) if a.ip in network]
            inside.sort(key=lambda ia: ia[1].network != network)  # its own subnet first
            if inside:
                members.append(Member(host, *inside[0]))
        result.append(Candidate(network, tuple(members)))
    return result


def usable(f: Facts) -> Iterable[tuple[Interface, ipaddress.IPv4Interface]]:
    for iface in f.interfaces:
        if iface.isup and not iface.loopback:
            for addr in iface.ipv4:
                if not (addr.ip.is_link_local or addr.ip.is_loopback):
                    yield iface, addr


def rank(c: Candidate, resolved: Mapping[str, set[str]]) -> tuple:
    """Bigger is better: reach, resolved names inside, physical links, not a bridge, speed,
    private, subnet as configured."""
    hits = sum(1 for m in c.members if any(_inside(a, c.network) for a in resolved.get(m.host, ())))
    physical = sum(1 for m in c.members if not m.interface.virtual)
    unbridged = sum(1 for m in c.members if not m.interface.bridge)
    speed = min((m.interface.speed for m in c.members), default=0)
    exact = sum(1 for m in c.members if m.address.network == c.network)
    return (len(c.members), hits, physical, unbridged, speed, c.network.is_private, exact)


def choose_interface(facts: Mapping[str, Facts], resolved: Mapping[str, set[str]],
                     hosts: Sequence[str], loopback_ok: bool = True) -> InterfaceChoice:
    """The subnet for the job, per-host names and addresses, and what was passed over.

    facts: the hosts that answered; resolved: addresses each host name resolves to (loopback
    left out); hosts: the whole inventory. One host alone uses loopback when loopback_ok (it is
    this machine); a lone remote host gets its real interface, which mpirun here must reach.
    """
    if len(hosts) == 1 and loopback_ok:
        return _loopback_choice(hosts[0], facts)
    cands = candidates(facts)
    decoys = [c for c in cands if c.shared_addresses]
    fair = [c for c in cands if not c.shared_addresses]
    fair.sort(key=lambda c: rank(c, resolved), reverse=True)
    needed = 1 if len(facts) == 1 else 2
    best = fair[0] if fair and len(fair[0].members) >= needed else None
    over = _passed_over(facts, decoys, fair, best)
    if best is None:
        return InterfaceChoice(None, of=len(facts), passed_over=tuple(over))
    return InterfaceChoice(
        str(best.network),
        names={m.host: m.interface.name for m in best.members},
        addresses={m.host: str(m.address.ip) for m in best.members},
        mtus={m.host: m.interface.mtu for m in best.members},
        reach=len(best.members), of=len(facts), passed_over=tuple(over))


def _loopback_choice(host: str, facts: Mapping[str, Facts]) -> InterfaceChoice:
    f = facts.get(host)
    lo = next((i for i in f.interfaces if i.loopback), None) if f else None
    address = str(lo.ipv4[0].ip) if lo and lo.ipv4 else "127.0.0.1"
    return InterfaceChoice(LOOPBACK_CIDR, {host: lo.name if lo else LOOPBACK_IF},
                           {host: address}, {host: lo.mtu if lo else 65536}, reach=1, of=1)


def _passed_over(facts: Mapping[str, Facts], decoys: list[Candidate], fair: list[Candidate],
                 best: Candidate | None) -> list[tuple[str, frozenset[str]]]:
    every = len(facts)
    chosen = {(m.host, m.interface.name) for m in best.members} if best else set()
    over: list[tuple[str, frozenset[str]]] = []
    for c in decoys:
        where = "every host" if len(c.members) == every else ", ".join(c.hosts)
        over.append((f"{c.names()} {' '.join(c.shared_addresses)} on {where} (same address: "
                     "a per-host bridge)", frozenset(c.hosts)))
    for c in fair:
        if c is best or all((m.host, m.interface.name) in chosen for m in c.members):
            continue
        if len(c.members) == 1:
            why = f"{c.names()} {c.network} on {c.hosts[0]} reaches no other host"
        else:
            why = f"{c.names()} {c.network} reaches {len(c.members)} of {every} hosts"
            if best is not None and len(c.members) == len(best.members):
                why += " (ranked lower)"
        over.append((why, frozenset(c.hosts)))
    for host, f in facts.items():
        for iface in f.interfaces:
            why = _unusable(iface)
            if why:
                over.append((f"{iface.name} {why}", frozenset([host])))
    return _merge(over)


def _unusable(iface: Interface) -> str | None:
    if iface.loopback:
        return "(loopback)"
    if iface.ipv4 and not iface.isup:
        return "(down)"
    if any(a.ip.is_link_local for a in iface.ipv4):
        return "(link-local)"
    return None


def _merge(over: list[tuple[str, frozenset[str]]]) -> list[tuple[str, frozenset[str]]]:
    merged: dict[str, set[str]] = {}
    for why, hosts in over:
        merged.setdefault(why, set()).update(hosts)
    return [(why, frozenset(hosts)) for why, hosts in merged.items()]


def _inside(address: str, network: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:
        return False
