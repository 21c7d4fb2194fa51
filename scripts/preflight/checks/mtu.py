"""mtu.path: a full-sized packet with don't-fragment set crosses every path, both ways.

The probes come from the mesh agents (active/mesh.py runs them). A host whose MTU differs from
the others breaks every path it is on while the small packets of ssh and ping get through, so
training starts and then stalls on the first large tensor; this check names that host.

Ids:
- `mtu.path`: a don't-fragment UDP echo at the interface MTU crosses from the host to every
  other and back; a limit counts only when it repeats (every full-size datagram lost, smaller
  ones back); the host whose MTU is the odd one out fails; no echo at all, or too few echoes to
  tell a limit from loss, warns; a host that loses packets at random (loss.path) is not judged.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from ..result import CheckResult, failed, passed, skipped, warned
from .blame import blame
from .mesh import MeshHost, PeerProbe, not_measured

FAMILY = "mtu"
CHECK_ID = "mtu.path"
IDS = (CHECK_ID,)
STAGE = "active"


def mtu_results(hosts: Iterable[MeshHost], mtus: Mapping[str, int], probes: Iterable[PeerProbe],
                not_started: Mapping[str, str], lossy: Iterable[str] = ()
                ) -> dict[str, CheckResult]:
    """One mtu.path result per host from the agents' DF probes; mtus are the interfaces' MTUs.
    lossy: hosts that loss.path found losing packets at random; their paths are not judged here,
    as random loss also loses full-size packets."""
    hosts, lossy = list(hosts), set(lossy)
    mtus = {h.name: mtus.get(h.name, h.mtu) for h in hosts}
    pairs = pair_states(p for p in probes
                        if p.src not in not_started and p.dst not in not_started)
    broken = {pair: mtu for pair, (state, mtu) in pairs.items()
              if state == "limit" and not pair & lossy}
    usual = usual_mtu(mtus.values())
    culprits = blame(broken, {h: (mtus[h] != usual, -mtus[h]) for h in mtus})
    silent = blame(p for p, (state, _) in pairs.items() if state == "silent"
                   and not p & (culprits | lossy))
    unsure = blame(p for p, (state, _) in pairs.items() if state in UNSURE
                   and not p & (culprits | lossy | silent))
    results: dict[str, CheckResult] = {}
    for host in hosts:
        if host.name in not_started:
            results[host.name] = not_measured(CHECK_ID)
        elif host.name in lossy:
            results[host.name] = skipped(CHECK_ID, "not judged: its paths lose packets at "
                                         "random (see loss.path), full-size ones too")
        elif host.name in culprits:
            results[host.name] = mtu_failure(host, mtus, broken, usual_mtu(
                m for n, m in mtus.items() if n not in culprits) or usual, probes)
        elif host.name in silent:
            results[host.name] = no_echo(host, [p for p, (state, _) in pairs.items()
                                                if state == "silent"])
        elif host.name in unsure:
            results[host.name] = not_told(host, pairs, probes)
        else:
            results[host.name] = mtu_pass(host, mtus[host.name], probes_from(host.name, pairs),
                                          sorted(culprits | silent | unsure))
    return results


UNSURE = ("unclear", "unfinished")
ORDER = ("limit", "silent", "unclear", "unfinished", "ok")  # a pair's state: the first seen


def pair_states(probes: Iterable[PeerProbe]) -> dict[frozenset[str], tuple[str, int | None]]:
    """Per host pair, both directions together: ("ok", None) when full-size packets cross both
    ways, ("limit", the smaller size that passes) for a limit that repeated, else the state
    that explains least ("silent": no echo at any size; "unclear", "unfinished")."""
    pairs: dict[frozenset[str], tuple[str, int | None]] = {}
    for probe in probes:
        pair = frozenset((probe.src, probe.dst))
        state = probe.state
        mtu = probe.path_mtu if state == "limit" else None
        seen_state, seen_mtu = pairs.get(pair, ("ok", None))
        if ORDER.index(state) < ORDER.index(seen_state):
            pairs[pair] = (state, mtu)
        elif state == seen_state == "limit" and mtu is not None:
            pairs[pair] = (state, min(mtu, seen_mtu or mtu))
        else:
            pairs.setdefault(pair, (seen_state, seen_mtu))
    return pairs


def pair_mtus(probes: Iterable[PeerProbe]) -> dict[frozenset[str], int | str | None]:
    """Per host pair: None if full-size packets pass both ways, else the largest size that
    does, or "unknown" when it was not measured (no echo, too few echoes, out of time)."""
    return {pair: (None if state == "ok" else mtu if state == "limit" else "unknown")
            for pair, (state, mtu) in pair_states(probes).items()}


def probes_from(name: str, pairs: Mapping[frozenset[str], object]) -> list[str]:
    return sorted(h for pair in pairs if name in pair for h in pair if h != name)


def usual_mtu(mtus: Iterable[int]) -> int:
    """The MTU most hosts have (the larger on a tie: the smaller one is the odd one out)."""
    counts = Counter(mtus)
    if not counts:
        return 0
    return max(counts, key=lambda m: (counts[m], m))


def peer_list(names: list[str], everyone: int) -> str:
    if len(names) == everyone and everyone > 3:
        return f"every other host ({everyone})"
    return ", ".join(names)


def evidence(host: str, probes: Iterable[PeerProbe]) -> str:
    """The counts behind a limit: how many full-size and limit-size datagrams came back."""
    full, limit = [0, 0], [0, 0]
    for p in probes:
        if host in (p.src, p.dst) and p.state == "limit":
            for into, key in ((full, "full"), (limit, "limit")):
                echoed, sent = p.mtu_counts.get(key, (0, 0))
                into[0] += echoed
                into[1] += sent
    if not full[1]:
        return ""
    return (f" ({full[1] - full[0]} of {full[1]} full-size datagrams lost, {limit[0]} of "
            f"{limit[1]} at the smaller size back)")


def mtu_failure(host: MeshHost, mtus: Mapping[str, int],
                broken: Mapping[frozenset[str], int], target: int,
                probes: Iterable[PeerProbe] = ()) -> CheckResult:
    mine = sorted((pair, mtu) for pair, mtu in broken.items() if host.name in pair)
    others = sorted(h for pair, _ in mine for h in pair if h != host.name)
    narrowest = min(mtu for _, mtu in mine)
    everyone = len(mtus) - 1
    other_mtus = sorted({mtus[h] for h in others})
    detail = (f"packets larger than {narrowest} bytes never cross between {host.name} and "
              f"{peer_list(others, everyone)}, every time{evidence(host.name, probes)}; "
              f"{host.interface} MTU is {mtus[host.name]} on {host.name} and "
              f"{'/'.join(map(str, other_mtus))} on the others")
    if mtus[host.name] != target:
        remedy = (f"set the same MTU on every host: ip link set {host.interface} mtu {target} "
                  f"on {host.name}")
    else:
        remedy = (f"the network carries only {narrowest}-byte packets to {host.name}: fix the "
                  f"MTU of the switch or tunnel, or set ip link set {host.interface} mtu "
                  f"{narrowest} on every host")
    return failed(CHECK_ID, detail, remedy)


def not_told(host: MeshHost, pairs: Mapping[frozenset[str], tuple[str, int | None]],
             probes: Iterable[PeerProbe]) -> CheckResult:
    peers = sorted(h for pair, (state, _) in pairs.items() if state in UNSURE and host.name in pair
                   for h in pair if h != host.name)
    return warned(CHECK_ID, f"full-size packets between {host.name} and {', '.join(peers)} "
                            f"were lost, but too few smaller ones came back (or time ran out) "
                            f"to tell an MTU limit from loss: not judged",
                  f"check by hand, a limit repeats and loss does not: ping -M do -s "
                  f"{host.mtu - 28} -c 20 {peers[0]}")


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
