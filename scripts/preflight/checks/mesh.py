"""mesh.tcp: every host reaches every other over TCP on the job's interface, on ephemeral ports.

The verdicts on what the mesh agents saw (active/mesh.py runs them: one agent per host, all
probing all at once: a TCP connect with a few timed round trips, and a don't-fragment UDP echo
at the interface MTU, judged by checks/mtu.py). A failure seen from several hosts is put on the
host they have in common, not on everyone.

Ids:
- `mesh.tcp`: TCP from the host to every other host and back, on ports above 1024, with the
  round trip; a host that others cannot reach (or that reaches nobody) fails, the rest pass and
  name it.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..result import CheckResult, failed, passed, skipped
from .blame import blame

FAMILY = "mesh"
CHECK_ID = "mesh.tcp"
IDS = (CHECK_ID,)
STAGE = "active"


@dataclass(frozen=True)
class MeshHost:
    """A host in the mesh: its name (the key of the results), address and interface on the
    job's network, and that interface's MTU as the facts saw it. `ssh_host` is where the agent
    runs when that differs from the name (two agents on this machine in tests)."""

    name: str
    address: str
    interface: str
    mtu: int
    ssh_host: str | None = None

    @property
    def target(self) -> str:
        return self.ssh_host or self.name


@dataclass(frozen=True)
class PeerProbe:
    """What one agent saw towards one peer (src -> dst)."""

    src: str
    dst: str
    tcp: str  # "ok" or why not: "refused", "timed out", ...
    port: int
    rtt_ms: float | None
    mtu_ok: bool
    path_mtu: int | None
    mtu_error: str = ""
    mtu_state: str = ""  # ok, limit, silent, unclear, unfinished (agents/mesh_agent.py)
    mtu_counts: Mapping[str, tuple[int, int]] = field(default_factory=dict)  # (echoed, sent)
    loss_sent: int = 0
    loss_echoed: int = 0

    @property
    def state(self) -> str:
        """The MTU outcome; from older agents, as mtu_ok and path_mtu imply it."""
        if self.mtu_state:
            return self.mtu_state
        return "ok" if self.mtu_ok else ("silent" if self.path_mtu is None else "limit")

    @property
    def tcp_ok(self) -> bool:
        return self.tcp == "ok"


@dataclass(frozen=True)
class MeshOutcome:
    """Everything the agents said: who never started (and why), each host's MTU, the probes."""

    hosts: tuple[MeshHost, ...]
    not_started: Mapping[str, str]
    mtus: Mapping[str, int]
    probes: tuple[PeerProbe, ...]


def parse_probes(result: dict) -> list[PeerProbe]:
    src = result["label"]
    return [PeerProbe(src=src, dst=p["peer"], tcp=p.get("tcp", "no result"), port=p.get("port", 0),
                  rtt_ms=p.get("rtt_ms"), mtu_ok=bool(p.get("mtu_ok")),
                  path_mtu=p.get("path_mtu"), mtu_error=p.get("mtu_error", ""),
                  mtu_state=p.get("mtu_state", ""),
                  mtu_counts={k: tuple(v) for k, v in (p.get("mtu_counts") or {}).items()},
                  loss_sent=int(p.get("loss_sent", 0)), loss_echoed=int(p.get("loss_echoed", 0)))
            for p in result.get("peers", [])]


def tcp_results(outcome: MeshOutcome) -> dict[str, CheckResult]:
    started = [h for h in outcome.hosts if h.name not in outcome.not_started]
    bad = [p for p in outcome.probes if not p.tcp_ok and p.dst not in outcome.not_started]
    inbound = Counter(p.dst for p in bad)
    outbound = Counter(p.src for p in bad)
    # A tie between two hosts goes to the one others cannot reach: a firewall drops incoming.
    culprits = blame((frozenset((p.src, p.dst)) for p in bad),
                     {h.name: inbound[h.name] - outbound[h.name] for h in started})
    results = {name: not_started_result(name, why) for name, why in outcome.not_started.items()}
    for host in started:
        if host.name in culprits:
            results[host.name] = tcp_failure(host, outcome)
        else:
            results[host.name] = tcp_pass(host, outcome, culprits)
    return results


def not_measured(check_id: str) -> CheckResult:
    """The verdict of a pairwise check (mtu.path, loss.path) on a host whose agent never ran."""
    return skipped(check_id, "not measured: the mesh agent did not run (see mesh.tcp)")


def not_started_result(name: str, why: str) -> CheckResult:
    return failed(CHECK_ID, f"the mesh agent did not run on {name}: {why}",
                  f"check that ssh {name} python3 -V works and that the address given for "
                  f"{name} is on its interface (ssh {name} ip -br addr)")


def tcp_failure(host: MeshHost, outcome: MeshOutcome) -> CheckResult:
    name = host.name
    ins = [p for p in outcome.probes if p.dst == name and not p.tcp_ok]
    outs = [p for p in outcome.probes if p.src == name and not p.tcp_ok]
    others = ",".join(h.address for h in outcome.hosts if h.name != name)  # iptables -s list
    reached_by = sorted({p.src for p in outcome.probes if p.dst == name and p.tcp_ok})
    if ins and not outs and not reached_by:
        detail = (f"TCP to {name} port {ins[0].port} {how(ins)} from "
                  f"{names(p.src for p in ins)} while ssh works: a firewall drops ports above 1024")
        remedy = (f"open TCP ports 1024-65535 between the hosts on {host.interface} (e.g. on "
                  f"{name}: iptables -I INPUT -p tcp -s {others} -j ACCEPT), "
                  f"or fix the firewall on {name}")
    elif ins and not outs:
        senders = names(p.src for p in ins)
        detail = (f"TCP to {name} port {ins[0].port} {how(ins)} from {senders} while "
                  f"{', '.join(reached_by)} got through: a firewall rule for some sources, or a "
                  f"lossy link")
        remedy = (f"look for rules by source in {name}'s firewall (iptables -L INPUT -n -v) and "
                  f"for loss between {senders} and {name} (ping -c 100 {name} from {senders})")
    elif outs and not ins:
        detail = (f"TCP from {name} to {names(p.dst for p in outs)} {how(outs)} while they "
                  f"reach {name}: outgoing connections above port 1024 are blocked")
        remedy = (f"allow outgoing TCP from {name} on {host.interface} (e.g. on {name}: "
                  f"iptables -I OUTPUT -p tcp -d {others} -j ACCEPT)")
    else:
        peers = names([p.src for p in ins] + [p.dst for p in outs])
        detail = (f"TCP between {name} and {peers} fails both ways ({how(ins + outs)}) on "
                  f"{host.interface} ({host.address}) while ssh works")
        remedy = (f"check {host.interface} on {name}: its address, routes and firewall "
                  f"(ip addr show {host.interface}; iptables -L -n)")
    return failed(CHECK_ID, detail, remedy)


def tcp_pass(host: MeshHost, outcome: MeshOutcome, culprits: set[str]) -> CheckResult:
    mine = sorted((p for p in outcome.probes if p.src == host.name and p.tcp_ok),
                  key=lambda p: p.dst)
    rtts = [p.rtt_ms for p in mine if p.rtt_ms is not None]
    detail = (f"TCP on {host.interface} above port 1024 reaches {len(mine)} "
              f"peer{'s' if len(mine) != 1 else ''}")
    if rtts:
        each = ", ".join(f"{p.dst} {p.rtt_ms:.2f}" for p in mine if p.rtt_ms is not None)
        detail += f", median round trip {statistics.median(rtts):.2f} ms ({each})"
    blamed = sorted(culprits | set(outcome.not_started))
    if blamed:
        detail += f"; {', '.join(blamed)} {'fails' if len(blamed) == 1 else 'fail'} this check"
    return passed(CHECK_ID, detail)


def how(probes: list[PeerProbe]) -> str:
    return "/".join(sorted({p.tcp for p in probes}))


def names(items: Iterable[str]) -> str:
    return ", ".join(sorted(set(items)))
