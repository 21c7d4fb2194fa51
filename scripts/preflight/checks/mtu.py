"""mtu.path: a full-sized packet with don't-fragment set crosses every path, both ways.

The probes come from the mesh agents (active/mesh.py runs them). A host whose MTU differs from
the others breaks every path it is on while the small packets of ssh and ping get through, so
training starts and then stalls on the first large tensor; this check names that host.

Ids:
- `mtu.path`: a don't-fragment UDP echo at the interface MTU crosses from the host to every
  other and back; the host whose MTU is the odd one out fails, no echo at all warns.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from ..result import CheckResult, failed, passed, skipped, warned
from .blame import blame
from .mesh import MeshHost, PeerProbe

FAMILY = "mtu"
CHECK_ID = "mtu.path"
IDS = (CHECK_ID,)
STAGE = "active"


def mtu_results(hosts: Iterable[MeshHost], mtus: Mapping[str, int], probes: Iterable[PeerProbe],
                not_started: Mapping[str, str]) -> dict[str, CheckResult]:
    """One mtu.path result per host from the agents' DF probes; mtus are the interfaces' MTUs."""
    hosts = list(hosts)
    mtus = {h.name: mtus.get(h.name, h.mtu) for h in hosts}
    pairs = pair_mtus(p for p in probes
                      if p.src not in not_started and p.dst not in not_started)
    broken = {pair: mtu for pair, mtu in pairs.items() if mtu is not None and mtu != "unknown"}
    unknown = [pair for pair, mtu in pairs.items() if mtu == "unknown"]
    usual = usual_mtu(mtus.values())
    culprits = blame(broken, {h: (mtus[h] != usual, -mtus[h]) for h in mtus})
    silent = blame(p for p in unknown if not p & culprits)
    results: dict[str, CheckResult] = {}
    for host in hosts:
        if host.name in not_started:
            results[host.name] = skipped(CHECK_ID, "not measured: the mesh agent did not run "
                                         "(see mesh.tcp)")
        elif host.name in culprits:
            results[host.name] = mtu_failure(host, mtus, broken, usual_mtu(
                m for n, m in mtus.items() if n not in culprits) or usual)
        elif host.name in silent:
            results[host.name] = no_echo(host, unknown)
        else:
            results[host.name] = mtu_pass(host, mtus[host.name], probes_from(host.name, pairs),
                                          sorted(culprits | silent))
    return results


def pair_mtus(probes: Iterable[PeerProbe]) -> dict[frozenset[str], int | str | None]:
    """Per host pair: None if full-size packets pass both ways, else the largest size that
    does, or "unknown" when nothing echoed at all (UDP filtered)."""
    pairs: dict[frozenset[str], int | str | None] = {}
    for probe in probes:
        pair = frozenset((probe.src, probe.dst))
        pairs.setdefault(pair, None)
        if probe.mtu_ok:
            continue
        seen = pairs[pair]
        if probe.path_mtu is None:
            pairs[pair] = "unknown" if seen is None else seen
        elif seen is None or seen == "unknown" or probe.path_mtu < seen:
            pairs[pair] = probe.path_mtu
    return pairs


def probes_from(name: str, pairs: Mapping[frozenset[str], object]) -> list[str]:
    return sorted(h for pair in pairs if name in pair for h in pair if h != name)


def usual_mtu(mtus: Iterable[int]) -> int:
    """The MTU most hosts have (the larger on a tie: the smaller one is the odd one out)."""
    counts = Counter(mtus)
    if not counts:
        return 0
    return max(counts, key=lambda m: (counts[m], m))


def arrow(pair: frozenset[str]) -> str:
    return "↔".join(sorted(pair))


def mtu_failure(host: MeshHost, mtus: Mapping[str, int],
                broken: Mapping[frozenset[str], int], target: int) -> CheckResult:
    mine = sorted((pair, mtu) for pair, mtu in broken.items() if host.name in pair)
    paths = ", ".join(f"{arrow(pair)} is {mtu}" for pair, mtu in mine)
    others = sorted(h for pair, _ in mine for h in pair if h != host.name)
    other_mtus = ", ".join(f"{mtus[h]} on {h}" for h in others)
    detail = (f"path MTU {paths}, {host.interface} MTU is {mtus[host.name]} on {host.name}"
              f" ({other_mtus})")
    if mtus[host.name] != target:
        remedy = (f"set the same MTU on every host: ip link set {host.interface} mtu {target} "
                  f"on {host.name}")
    else:
        narrowest = min(mtu for _, mtu in mine)
        remedy = (f"the network carries only {narrowest}-byte packets to {host.name}: fix the "
                  f"MTU of the switch or tunnel, or set ip link set {host.interface} mtu "
                  f"{narrowest} on every host")
    return failed(CHECK_ID, detail, remedy)


def no_echo(host: MeshHost, unknown: list[frozenset[str]]) -> CheckResult:
    peers = sorted(h for pair in unknown if host.name in pair for h in pair if h != host.name)
    detail = (f"no UDP echo between {host.name} and {', '.join(peers)} at any size: "
              f"the path MTU was not measured")
    remedy = (f"allow UDP between the hosts on {host.interface}, or check by hand: "
              f"ping -M do -s {host.mtu - 28} {peers[0]}")
    return warned(CHECK_ID, detail, remedy)


def mtu_pass(host: MeshHost, mtu: int, peers: list[str], blamed: list[str]) -> CheckResult:
    reached = [p for p in peers if p not in blamed]
    detail = (f"{mtu}-byte packets with don't-fragment cross to {', '.join(reached) or 'none'} "
              f"and back ({host.interface} MTU {mtu})")
    if blamed:
        detail += f"; {', '.join(blamed)} {'fails' if len(blamed) == 1 else 'fail'} this check"
    return passed(CHECK_ID, detail)
