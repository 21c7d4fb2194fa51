"""The decision: which interface the job uses, the one subnet through which every host reaches
every other.

The choice, a pure function of the probes' facts: candidate subnets come from every up,
non-loopback IPv4 interface of every host. A subnet where two hosts hold the same address is a
decoy (docker0 is 172.17.0.1/16 everywhere) and is dropped, as is link-local. The subnet reached
by the most hosts wins; ties go to the subnet holding the addresses the host names resolve to,
then to physical over virtual interfaces, then to non-bridges, then to faster links, then to
private addresses. One host alone uses loopback. Interface names may differ between hosts:
Open MPI takes the CIDR, Gloo and NCCL take the per-host names.

Where several subnets reach the same hosts (a management LAN where the names resolve and a data
network), that order is only where the choice starts: contenders() lists them, the runner
(active/networks.py) measures what each carries in a short burst between the same few pairs,
and choose_interface() takes the fastest, keeping the first in that order unless another
carries TIE_RATIO times more (two equal networks measure a little apart on a loaded machine).
A subnet on which a pair could not connect that connected on another is passed over: it is
broken there, whoever else it reaches. --interface forces a subnet by name or CIDR; it is
checked like any other, and a note says when another measured faster.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from .errors import UserError
from .facts import Facts, Interface

LOOPBACK_CIDR = "127.0.0.0/8"
LOOPBACK_IF = "lo"
TIE_RATIO = 1.5  # a later-ranked subnet wins only when it carries this many times more


@dataclass(frozen=True)
class Carried:
    """What one subnet carried in the race: one entry per pair, {"from", "to", "MBps",
    "rtt_ms"} where the burst crossed, {"from", "to", "error"} where it did not."""

    cidr: str
    interface: str
    pairs: tuple[dict, ...]

    @property
    def worked(self) -> list[dict]:
        return [p for p in self.pairs if "error" not in p]

    @property
    def rate_MBps(self) -> float:
        """The median pair's rate (the lower of two); 0 where no pair got through."""
        rates = sorted(p["MBps"] for p in self.worked)
        return rates[(len(rates) - 1) // 2] if rates else 0.0

    @property
    def rtt_ms(self) -> float | None:
        rtts = sorted(p["rtt_ms"] for p in self.worked)
        return rtts[len(rtts) // 2] if rtts else None  # the higher of two

    def words(self) -> str:
        """'eth2 10.233.0.0/24: 1.1 GB/s, 0.05 ms' or why nothing was measured."""
        head = f"{self.interface} {self.cidr}"
        if not self.worked:
            first = self.pairs[0] if self.pairs else {"error": "no pair to measure"}
            return f"{head}: nothing crossed ({pair_words(first)})"
        return f"{head}: {rate_text(self.rate_MBps)}, {self.rtt_ms:g} ms"

    def as_dict(self) -> dict:
        return {"cidr": self.cidr, "interface": self.interface,
                "MBps": round(self.rate_MBps, 1), "rtt_ms": self.rtt_ms,
                "pairs": list(self.pairs)}


def pair_words(pair: dict) -> str:
    return f"{pair.get('from')}->{pair.get('to')}: {pair.get('error', 'ok')}"


def rate_text(MBps: float) -> str:
    """11 MB/s, 1.1 GB/s, 0.4 MB/s: decimal units, as link speeds are sold."""
    if MBps >= 1000:
        return f"{MBps / 1000:.1f} GB/s"
    return f"{MBps:.0f} MB/s" if MBps >= 10 else f"{MBps:.1f} MB/s"


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
    carried: tuple[Carried, ...] = ()  # the subnets raced, in the order they were ranked
    runners_up: tuple[InterfaceChoice, ...] = ()  # raced subnets to fall back to, best first

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


def ranked(facts: Mapping[str, Facts], resolved: Mapping[str, set[str]]
           ) -> tuple[list[Candidate], list[Candidate]]:
    """The decoys (an address held by two hosts) and the other subnets, best first."""
    cands = candidates(facts)
    decoys = [c for c in cands if c.shared_addresses]
    fair = [c for c in cands if not c.shared_addresses]
    fair.sort(key=lambda c: rank(c, resolved), reverse=True)
    return decoys, fair


def contenders(facts: Mapping[str, Facts], resolved: Mapping[str, set[str]]
               ) -> list[InterfaceChoice]:
    """The subnets worth a race: the first-ranked and every other that reaches the same hosts
    (at least two), in rank order; empty where there is nothing to choose between."""
    _, fair = ranked(facts, resolved)
    if not fair or len(fair[0].members) < 2:
        return []
    rivals = [c for c in fair if set(c.hosts) == set(fair[0].hosts)]
    return [as_choice(c, len(facts)) for c in rivals] if len(rivals) > 1 else []


def as_choice(c: Candidate, of: int, over: Sequence[tuple[str, frozenset[str]]] = (),
              carried: Sequence[Carried] = ()) -> InterfaceChoice:
    return InterfaceChoice(
        str(c.network), names={m.host: m.interface.name for m in c.members},
        addresses={m.host: str(m.address.ip) for m in c.members},
        mtus={m.host: m.interface.mtu for m in c.members},
        reach=len(c.members), of=of, passed_over=tuple(over), carried=tuple(carried))


def choose_interface(facts: Mapping[str, Facts], resolved: Mapping[str, set[str]],
                     hosts: Sequence[str], loopback_ok: bool = True, forced: str | None = None,
                     carried: Sequence[Carried] = ()) -> InterfaceChoice:
    """The subnet for the job, per-host names and addresses, and what was passed over.

    facts: the hosts that answered; resolved: addresses each host name resolves to (loopback
    left out); hosts: the whole inventory. One host alone uses loopback when loopback_ok (it is
    this machine); a lone remote host gets its real interface, which mpirun here must reach.
    forced: an interface name or a CIDR (--interface); carried: the race of contenders().
    """
    if len(hosts) == 1 and loopback_ok and not forced:
        return _loopback_choice(hosts[0], facts)
    decoys, fair = ranked(facts, resolved)
    pool = matching(forced, fair, decoys) if forced else fair
    needed = 1 if len(facts) == 1 else 2
    best = pool[0] if pool and len(pool[0].members) >= needed else None
    raced = {c.cidr: c for c in carried}
    verdict: list[tuple[str, frozenset[str]]] = []
    runners: list[Candidate] = []
    if best is not None and len(raced) > 1:
        if not forced:
            contest = [c for c in fair if str(c.network) in raced]
            best = fastest(contest, raced)
            runners = sorted((c for c in contest if c is not best and raced[str(c.network)].worked),
                             key=lambda c: raced[str(c.network)].rate_MBps, reverse=True)
        verdict = [(race_words(best, raced, forced), frozenset(best.hosts))]
    over = verdict + _passed_over(facts, decoys, fair, best, set(raced), forced)
    if best is None:
        return InterfaceChoice(None, of=len(facts), passed_over=tuple(over))
    return dataclasses.replace(as_choice(best, len(facts), over, carried), runners_up=tuple(
        as_choice(c, len(facts), over, carried) for c in runners))


def fall_back(choice: InterfaceChoice, to: InterfaceChoice, why: str) -> InterfaceChoice:
    """`to` (one of choice.runners_up) instead of choice, which failed as `why` says: the race's
    line now says so, the rest of what was passed over stays."""
    words = "; ".join(c.words() for c in choice.carried)
    line = (f"measured {words}; but on {choice.interface} {choice.cidr} {why}: "
            f"{to.interface} chosen")
    rest = [entry for entry in choice.passed_over if not entry[0].startswith("measured ")]
    return dataclasses.replace(to, passed_over=((line, frozenset(to.names)), *rest),
                               runners_up=tuple(r for r in choice.runners_up if r != to))


def matching(forced: str, fair: list[Candidate], decoys: list[Candidate]) -> list[Candidate]:
    """The subnets --interface names (an interface name on some host, or a network that
    overlaps the CIDR), best first; a UserError where none does or only a decoy does."""
    try:
        wanted = ipaddress.ip_network(forced, strict=False)
    except ValueError:
        wanted = None

    def named(c: Candidate) -> bool:
        if wanted is not None:
            return wanted.version == 4 and c.network.overlaps(wanted)
        return any(m.interface.name == forced for m in c.members)
    found = [c for c in fair if named(c)]
    if found:
        return found
    offered = "; ".join(f"{c.names()} {c.network}" for c in fair) or "none"
    if any(named(c) for c in decoys):
        raise UserError(f"--interface {forced} is a per-host bridge with the same address on "
                        "several hosts (docker0-like): no host reaches another through it",
                        f"name a network the hosts share; they have: {offered}")
    raise UserError(f"--interface {forced}: no host that answered has an interface of that "
                    "name or an address in that network",
                    f"give a name or CIDR the hosts have: {offered}")


def fastest(raced: list[Candidate], carried: Mapping[str, Carried]) -> Candidate:
    """The first of raced (in rank order) within TIE_RATIO of the fastest, leaving out a subnet
    where a pair did not connect that did on another subnet. Where nothing crossed anywhere the
    first stands: the fault is then the hosts', and the mesh test finds it."""
    crossed = {(p["from"], p["to"]) for c in carried.values() for p in c.worked}

    def broken(c: Candidate) -> bool:
        return any((p["from"], p["to"]) in crossed for p in carried[str(c.network)].pairs
                   if "error" in p)
    whole = [c for c in raced if not broken(c)] or raced
    top = max(carried[str(c.network)].rate_MBps for c in whole)
    return next(c for c in whole if carried[str(c.network)].rate_MBps * TIE_RATIO >= top)


def race_words(best: Candidate, carried: Mapping[str, Carried], forced: str | None) -> str:
    """'eth0 10.231.0.0/24: 11 MB/s, 0.3 ms; eth2 10.233.0.0/24: 1.1 GB/s, 0.05 ms: eth2
    chosen', or with --interface, the forced one and whether another measured faster."""
    words = "; ".join(c.words() for c in carried.values())
    mine = carried.get(str(best.network))
    if forced is None:
        return f"measured {words}: {best.names()} chosen"
    faster = [c for c in carried.values()
              if mine is not None and c.rate_MBps > TIE_RATIO * mine.rate_MBps]
    if faster:
        return (f"--interface {forced} forced although another network is faster: {words}; "
                f"without --interface {faster[0].interface} would be chosen")
    return f"--interface {forced} forced; measured {words}"


def _loopback_choice(host: str, facts: Mapping[str, Facts]) -> InterfaceChoice:
    f = facts.get(host)
    lo = next((i for i in f.interfaces if i.loopback), None) if f else None
    address = str(lo.ipv4[0].ip) if lo and lo.ipv4 else "127.0.0.1"
    return InterfaceChoice(LOOPBACK_CIDR, {host: lo.name if lo else LOOPBACK_IF},
                           {host: address}, {host: lo.mtu if lo else 65536}, reach=1, of=1)


def _passed_over(facts: Mapping[str, Facts], decoys: list[Candidate], fair: list[Candidate],
                 best: Candidate | None, raced: set[str] = frozenset(),
                 forced: str | None = None) -> list[tuple[str, frozenset[str]]]:
    every = len(facts)
    chosen = {(m.host, m.interface.name) for m in best.members} if best else set()
    over: list[tuple[str, frozenset[str]]] = []
    for c in decoys:
        where = "every host" if len(c.members) == every else ", ".join(c.hosts)
        over.append((f"{c.names()} {' '.join(c.shared_addresses)} on {where} (same address: "
                     "a per-host bridge)", frozenset(c.hosts)))
    for c in fair:
        if c is best or all((m.host, m.interface.name) in chosen for m in c.members) \
                or str(c.network) in raced:  # the race's line says why
            continue
        if len(c.members) == 1:
            why = f"{c.names()} {c.network} on {c.hosts[0]} reaches no other host"
        else:
            why = f"{c.names()} {c.network} reaches {len(c.members)} of {every} hosts"
            if forced:
                why += f" (not --interface {forced})"
            elif best is not None and len(c.members) == len(best.members):
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
