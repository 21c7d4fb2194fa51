"""mesh.tcp: every host reaches every other over TCP on the job's interface, on ephemeral ports.

One mesh agent (preflight/mesh_agent.py) runs on each host through one ssh session per host. The
agents open listeners on ports above 1024 (where MPI and Gloo connect), learn each other's ports
from us, then all probe all at once: a TCP connect with a few timed round trips, and a
don't-fragment UDP echo at the interface MTU (mapped to results by checks/mtu.py). A failure seen
from several hosts is put on the host they have in common, not on everyone.
"""

from __future__ import annotations

import contextlib
import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from preflight.checks import parse_event
from preflight.remote import Ssh, fan_out
from preflight.result import CheckResult, failed, passed, skipped

CHECK_ID = "mesh.tcp"
AGENT_SOURCE = (Path(__file__).resolve().parent.parent / "mesh_agent.py").read_text()
# Runs the given interpreter, or python3 if that path is not there on the host.
LAUNCHER = 'p="$1"; shift; [ -x "$p" ] || p=python3; exec "$p" "$@"'
READY_SHARE = 0.5  # of the timeout, for every agent to start and report its ports
RESULT_MARGIN_S = 1.0  # of the timeout, for the agents' results to come back


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
class Probe:
    """What one agent saw towards one peer (src -> dst)."""

    src: str
    dst: str
    tcp: str  # "ok" or why not: "refused", "timed out", ...
    port: int
    rtt_ms: float | None
    mtu_ok: bool
    path_mtu: int | None
    mtu_error: str = ""

    @property
    def tcp_ok(self) -> bool:
        return self.tcp == "ok"


@dataclass(frozen=True)
class MeshOutcome:
    """Everything the agents said: who never started (and why), each host's MTU, the probes."""

    hosts: tuple[MeshHost, ...]
    not_started: Mapping[str, str]
    mtus: Mapping[str, int]
    probes: tuple[Probe, ...]


def run_mesh(ssh: Ssh, hosts: list[MeshHost], python_for: Callable[[str], str] | None = None,
             timeout_s: float = 10) -> dict[str, list[CheckResult]]:
    """mesh.tcp and mtu.path for every host, from one all-to-all run bounded by timeout_s."""
    if len(hosts) < 2:
        return {h.name: [skipped(CHECK_ID, "one host: no mesh"),
                         skipped("mtu.path", "one host: no mesh")] for h in hosts}
    from preflight.checks.mtu import mtu_results  # mtu builds on this module's types

    outcome = run_agents(ssh, hosts, python_for or (lambda _host: sys.executable), timeout_s)
    tcp = tcp_results(outcome)
    mtu = mtu_results(outcome.hosts, outcome.mtus, outcome.probes, outcome.not_started)
    return {h.name: [tcp[h.name], mtu[h.name]] for h in hosts}


# --- running the agents -------------------------------------------------------------------------

class Agent:
    """One agent process and the JSON lines it has printed so far."""

    def __init__(self, host: MeshHost, proc: subprocess.Popen) -> None:
        self.host = host
        self.proc = proc
        self.events: queue.Queue[dict] = queue.Queue()
        self.stderr: list[str] = []
        threading.Thread(target=self._read_stdout, daemon=True).start()
        threading.Thread(target=self._read_stderr, daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            event = parse_event(line)
            if event is not None:
                self.events.put(event)
        self.events.put({"event": "exit"})

    def _read_stderr(self) -> None:
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip())

    def wait_event(self, kind: str, deadline: float) -> dict | None:
        while (left := deadline - time.monotonic()) > 0:
            try:
                event = self.events.get(timeout=left)
            except queue.Empty:
                return None
            if event.get("event") == kind:
                return event
            if event.get("event") == "exit":
                return None
        return None

    def send(self, line: str) -> None:
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
        except (OSError, ValueError):  # the agent is gone; its missing answer says so
            pass

    def why_not(self, default: str) -> str:
        lines = [line for line in self.stderr if line.strip()]
        return lines[-1][:200] if lines else default

    def stop(self) -> None:
        self.send("done")
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def agent_argv(host: MeshHost, python: str, max_s: float) -> list[str]:
    return ["sh", "-c", LAUNCHER, "sh", python, "-c", AGENT_SOURCE,
            "--label", host.name, "--address", host.address, "--interface", host.interface,
            "--mtu", str(host.mtu), "--max-s", str(int(max_s) + 30)]


def launch(ssh: Ssh, host: MeshHost, python: str, timeout_s: float) -> Agent | str:
    """The agent on host, or why it could not even be started (no ssh client, say)."""
    try:
        return Agent(host, ssh.popen(host.target, agent_argv(host, python, timeout_s)))
    except OSError as exc:
        return str(exc)


def run_agents(ssh: Ssh, hosts: list[MeshHost], python_for: Callable[[str], str],
               timeout_s: float) -> MeshOutcome:
    """Both phases: all agents listen and report their ports, then all probe all."""
    start = time.monotonic()
    launched = fan_out(hosts, lambda h: launch(ssh, h, python_for(h.target), timeout_s))
    agents = [a for a in launched if isinstance(a, Agent)]
    not_started = {h.name: why for h, why in zip(hosts, launched) if isinstance(why, str)}
    try:
        # Phase 1 gets half the time: an ssh connection and a Python start on every host.
        ready = dict(zip([a.host.name for a in agents], fan_out(
            agents, lambda a: a.wait_event("ready", start + timeout_s * READY_SHARE))))
        live = [a for a in agents if ready[a.host.name] is not None]
        not_started.update({a.host.name: a.why_not(
            f"no answer within {timeout_s * READY_SHARE:.0f}s (ssh or python failed)")
            for a in agents if ready[a.host.name] is None})
        results = probe_all(live, hosts, ready, start + timeout_s)
    finally:
        fan_out(agents, lambda a: a.stop())
    probes: list[Probe] = []
    for agent, result in zip(live, results):
        if result is None:
            not_started[agent.host.name] = agent.why_not(f"no result within {timeout_s:.0f}s")
        else:
            probes.extend(parse_probes(result))
    mtus = {name: int(event.get("mtu", 0)) for name, event in ready.items() if event}
    return MeshOutcome(tuple(hosts), not_started, mtus, tuple(probes))


def probe_all(live: list[Agent], hosts: list[MeshHost], ready: Mapping[str, dict | None],
              deadline: float) -> list[dict | None]:
    """Phase 2: each agent gets its peers and a time budget, and tests them all at once."""
    budget_s = max(deadline - time.monotonic() - RESULT_MARGIN_S, 1.0)
    for agent in live:
        agent.send(json.dumps(peers_command(agent.host.name, hosts, ready, budget_s)))
    return fan_out(live, lambda a: a.wait_event("result", deadline))


def peers_command(name: str, hosts: list[MeshHost], ready: Mapping[str, dict | None],
                  budget_s: float) -> dict:
    peers = [{"label": h.name, "address": h.address, "tcp_port": ready[h.name]["tcp_port"],
              "udp_port": ready[h.name]["udp_port"], "mtu": ready[h.name].get("mtu", h.mtu)}
             for h in hosts if h.name != name and ready.get(h.name)]
    return {"peers": peers, "budget_s": round(budget_s, 2)}



def parse_probes(result: dict) -> list[Probe]:
    src = result["label"]
    return [Probe(src=src, dst=p["peer"], tcp=p.get("tcp", "no result"), port=p.get("port", 0),
                  rtt_ms=p.get("rtt_ms"), mtu_ok=bool(p.get("mtu_ok")),
                  path_mtu=p.get("path_mtu"), mtu_error=p.get("mtu_error", ""))
            for p in result.get("peers", [])]


# --- who is to blame ----------------------------------------------------------------------------

def blame(pairs: Iterable[frozenset[str]], tiebreak: Mapping[str, Hashable] | None = None
          ) -> set[str]:
    """The hosts to put failing pairs on: the odd one out, not everyone.

    Repeatedly takes the host in the most failing pairs (h2 in h1-h2 and h2-h3), drops the
    pairs it explains, and goes on with what is left. Hosts tied for most go together, unless
    the tiebreak (higher wins) separates them; with no winner, all of them are named.
    """
    remaining = {frozenset(p) for p in pairs}
    culprits: set[str] = set()
    while remaining:
        degree = Counter(host for pair in remaining for host in pair)
        most = max(degree.values())
        tied = sorted(h for h, d in degree.items() if d == most)
        if tiebreak and len(tied) > 1:
            best = max(tiebreak.get(h, 0) for h in tied)
            tied = [h for h in tied if tiebreak.get(h, 0) == best]
        culprits.update(tied)
        remaining = {p for p in remaining if not p & culprits}
    return culprits


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


def how(probes: list[Probe]) -> str:
    return "/".join(sorted({p.tcp for p in probes}))


def names(items: Iterable[str]) -> str:
    return ", ".join(sorted(set(items)))
