"""Runs the mesh agents (agents/mesh_agent.py): one per host, in the ssh session the host probe
left open there (agents/host_probe.py --stay), else in a new one.

The agents open listeners on ports above 1024 (where MPI and Gloo connect), learn each other's
ports from here, then all probe their partners at once: every other host up to ALL_PAIRS_UP_TO
hosts, beyond that the same ring and random matchings as the MPI pair rounds
(agents/mpi_probe.py schedule()), so that a host's work does not grow with the cluster. What
they saw goes to the verdicts of checks/mesh.py (mesh.tcp), checks/mtu.py (mtu.path) and
checks/loss.py (loss.path); a host with a doubtful verdict is tried again in a small round
before it stands.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Mapping

from ..agents import parse_event, source
from ..agents.mpi_probe import ALL_PAIRS_UP_TO, partners
from ..checks import loss, mtu
from ..checks.mesh import CHECK_ID, MeshHost, MeshOutcome, PeerProbe, parse_probes, tcp_results
from ..remote import Session, Ssh, fan_out
from ..result import CheckResult, Status, skipped, warned

AGENT_SOURCE = source("mesh_agent")
# Runs the given interpreter, or python3 if that path is not there on the host.
LAUNCHER = 'p="$1"; shift; [ -x "$p" ] || p=python3; exec "$p" "$@"'
READY_SHARE = 0.5  # of the timeout, for every agent to start and report its ports
RESULT_MARGIN_S = 1.0  # of the timeout, for the agents' results to come back
DOUBTFUL = (Status.FAIL, Status.WARN)
COMPANY = 3  # hosts that passed, to try the suspects with
CONFIRM_FACTOR = 2.0
CONFIRM_PROBES = 200  # loss probes per peer in the second round: few peers, so more each
LOSS_PER_HOST = 250  # loss probes each host sends in the first round (as many come to it) ...
LOSS_PER_PEER = (20, 200)  # ... within these bounds per peer: a suspect's second round decides
LOSS_PEERS = 16  # each host sends bursts to this many of its partners (gets them from as many)
Partners = dict[str, set[str]]  # host -> the hosts it probes (and is probed by)


def run_mesh(ssh: Ssh, hosts: list[MeshHost], python_for: Callable[[str], str] | None = None,
             timeout_s: float = 10, seed: int = 0) -> dict[str, list[CheckResult]]:
    """mesh.tcp, mtu.path and loss.path for every host, from one run of every host with its
    partners (sampled_partners), bounded by timeout_s. The hosts it finds fault with are tried
    again in a second, small round with a few hosts that passed, given twice the time, before
    the verdict stands: the crowd of the first round (every agent probing at once) is no fault."""
    if len(hosts) < 2:
        return {h.name: [skipped(CHECK_ID, "one host: no mesh"),
                         skipped(mtu.CHECK_ID, "one host: no mesh"),
                         skipped(loss.CHECK_ID, "one host: no mesh")] for h in hosts}
    python_for = python_for or (lambda _host: sys.executable)
    pairs = sampled_partners([h.name for h in hosts], seed)
    first = judge(run_agents(ssh, hosts, python_for, timeout_s, pairs))
    suspects = [h for h in hosts if any(c.status in DOUBTFUL for c in first[h.name])]
    if not suspects:
        return first
    passing = [h for h in hosts if h not in suspects]
    companies = {h.name: companions(k, passing, len(hosts)) for k, h in enumerate(suspects)}
    again_hosts = hosts if not passing else [
        h for h in hosts if h in suspects or any(h in c for c in companies.values())]
    again_pairs = confirm_partners(again_hosts, companies, first_failures(first, pairs))
    again = judge(run_agents(ssh, again_hosts, python_for, CONFIRM_FACTOR * timeout_s,
                             again_pairs, CONFIRM_PROBES))
    return {h.name: (confirmed(first[h.name], again[h.name], with_whom(companies[h.name]),
                               CONFIRM_FACTOR * timeout_s) if h in suspects else first[h.name])
            for h in hosts}


def companions(index: int, passing: list[MeshHost], hosts: int) -> list[MeshHost]:
    """The hosts that passed that suspect number `index` is tried again with: the first
    COMPANY of them up to ALL_PAIRS_UP_TO hosts; beyond, a different COMPANY for each suspect
    where there are enough, so that many suspects do not crowd the same few hosts."""
    if hosts <= ALL_PAIRS_UP_TO or len(passing) <= COMPANY:
        return passing[:COMPANY]
    return [passing[(index * COMPANY + j) % len(passing)] for j in range(COMPANY)]


def with_whom(company: list[MeshHost]) -> str:
    return "with " + ", ".join(h.name for h in company) if company else "all hosts again"


def loss_probes(peers: int) -> int:
    """Loss probes per measured peer in the first round: LOSS_PER_HOST shared by the peers a
    host bursts to (up to LOSS_PEERS), within bounds. About 500 round trips cross each host,
    enough to see 1% in the first round; the second round, with few peers, counts more."""
    low, high = LOSS_PER_PEER
    return max(low, min(high, LOSS_PER_HOST // max(1, min(LOSS_PEERS, peers))))


def sampled_partners(names: list[str], seed: int = 0) -> Partners:
    """Who probes whom: the MPI pair schedule's pairs, in both directions."""
    every = partners(len(names), seed)
    return {name: {names[i] for i in every[at]} for at, name in enumerate(names)}


def first_failures(first: Mapping[str, list[CheckResult]], pairs: Partners) -> set[frozenset]:
    """The pairs of the first round in which both hosts were found doubtful."""
    doubtful = {n for n, checks in first.items() if any(c.status in DOUBTFUL for c in checks)}
    return {frozenset((a, b)) for a in doubtful for b in pairs.get(a, ()) if b in doubtful}


def confirm_partners(hosts: list[MeshHost], companies: Mapping[str, list[MeshHost]],
                     failed_together: set[frozenset]) -> Partners:
    """The second round's pairs: all of them up to ALL_PAIRS_UP_TO hosts; beyond, each suspect
    (a key of `companies`) with its company and with the suspects it was doubtful with (so a
    bad link is seen again with both its ends)."""
    names = [h.name for h in hosts]
    if len(names) <= ALL_PAIRS_UP_TO:
        return {n: set(names) - {n} for n in names}
    pairs: Partners = {n: set() for n in names}
    for suspect, company in companies.items():
        mates = {h.name for h in company} | {
            m for m in companies if frozenset((suspect, m)) in failed_together}
        for mate in mates - {suspect}:
            pairs[suspect].add(mate)
            pairs[mate].add(suspect)
    return pairs


def judge(outcome: MeshOutcome) -> dict[str, list[CheckResult]]:
    tcp = tcp_results(outcome)
    lost = loss.loss_results(outcome.hosts, outcome.probes, outcome.not_started)
    lossy = {n for n, c in lost.items() if c.status in DOUBTFUL}
    mtu_checks = mtu.mtu_results(outcome.hosts, outcome.mtus, outcome.probes,
                                 outcome.not_started, lossy)
    return {h.name: [tcp[h.name], mtu_checks[h.name], lost[h.name]] for h in outcome.hosts}


def confirmed(first: list[CheckResult], again: list[CheckResult], with_whom: str,
              budget_s: float) -> list[CheckResult]:
    """A suspect's verdicts after the second round: what failed and now passes is a warning
    that says both; what fails again stands, saying it was confirmed."""
    results = []
    for before, after in zip(first, again):
        if before.status not in DOUBTFUL or after.status is Status.SKIP:
            results.append(before)
        elif after.status is Status.PASS:
            results.append(warned(before.id, f"{after.detail}, but only in a second round "
                                             f"({with_whom}, {budget_s:.0f} s); the first, "
                                             f"with every host at once, found: {before.detail}",
                                  f"{before.remedy}; if it passes alone, look at the load on "
                                  f"the hosts and the network during the first round"))
        else:
            results.append(dataclasses.replace(
                after, detail=f"{after.detail} (seen again in a second round, {with_whom})"))
    return results


class Agent:
    """One agent and its session: the JSON events it prints, what it said on stderr."""

    def __init__(self, host: MeshHost, session: Session) -> None:
        self.host = host
        self.session = session

    def wait_event(self, kind: str, deadline: float) -> dict | None:
        """The next event of this kind; None when the agent ended or the deadline passed."""
        while True:
            try:
                line = self.session.read_line(deadline)
            except TimeoutError:
                return None
            if line is None:
                return None
            event = parse_event(line)
            if event is not None and event.get("event") == kind:
                return event

    def send(self, line: str) -> None:
        self.session.send(line)  # where the agent is gone, its missing answer says so

    def why_not(self, default: str) -> str:
        lines = [line.strip() for line in self.session.stderr if line.strip()]
        return lines[-1][:200] if lines else default

    def stop(self) -> None:
        self.send("done")
        self.session.end()


def agent_args(host: MeshHost, max_s: float) -> list[str]:
    return ["--label", host.name, "--address", host.address, "--interface", host.interface,
            "--mtu", str(host.mtu), "--max-s", str(int(max_s) + 30)]


def agent_argv(host: MeshHost, python: str, max_s: float) -> list[str]:
    return ["sh", "-c", LAUNCHER, "sh", python, "-c", AGENT_SOURCE, *agent_args(host, max_s)]


def launch(ssh: Ssh, host: MeshHost, python: str, timeout_s: float) -> Agent | str:
    """The agent on host: in the session the host probe left parked there (no second login),
    else in a new one; or why it could not even be started (no ssh client, say)."""
    parked = ssh.take(host.target)
    if parked is not None and parked.send(json.dumps(
            {"run": "mesh_agent", "source": AGENT_SOURCE, "argv": agent_args(host, timeout_s)})):
        return Agent(host, parked)
    if parked is not None:
        parked.end()
    try:
        return Agent(host, ssh.session(host.target, agent_argv(host, python, timeout_s)))
    except OSError as exc:
        return str(exc)


def run_agents(ssh: Ssh, hosts: list[MeshHost], python_for: Callable[[str], str],
               timeout_s: float, pairs: Partners, loss_per_peer: int | None = None
               ) -> MeshOutcome:
    """Both phases: all agents listen and report their ports, then each probes its partners
    (loss_per_peer loss probes to each; by default loss_probes() of its partner count)."""
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
        results = probe_all(live, hosts, ready, start + timeout_s, pairs, loss_per_peer)
    finally:
        fan_out(agents, lambda a: a.stop())
    probes: list[PeerProbe] = []
    for agent, result in zip(live, results):
        if result is None:
            not_started[agent.host.name] = agent.why_not(f"no result within {timeout_s:.0f}s")
        else:
            probes.extend(parse_probes(result))
    mtus = {name: int(event.get("mtu", 0)) for name, event in ready.items() if event}
    return MeshOutcome(tuple(hosts), not_started, mtus, tuple(probes))


def probe_all(live: list[Agent], hosts: list[MeshHost], ready: Mapping[str, dict | None],
              deadline: float, pairs: Partners, loss_per_peer: int | None = None
              ) -> list[dict | None]:
    """Phase 2: each agent gets its peers and a time budget, and tests them all at once."""
    budget_s = max(deadline - time.monotonic() - RESULT_MARGIN_S, 1.0)
    for agent in live:
        agent.send(json.dumps(peers_command(agent.host.name, hosts, ready, budget_s,
                                            pairs[agent.host.name], loss_per_peer)))
    return fan_out(live, lambda a: a.wait_event("result", deadline))


def peers_command(name: str, hosts: list[MeshHost], ready: Mapping[str, dict | None],
                  budget_s: float, mine: set[str], loss_per_peer: int | None = None) -> dict:
    """This host's partners (`mine`) for TCP and the MTU; loss bursts to the LOSS_PEERS of them
    after this one in the ring of hosts, so that each host is in at most 2 * LOSS_PEERS
    measured pairs however many hosts there are."""
    order = [h.name for h in hosts]
    at = order.index(name)
    ring = [order[(at + k) % len(order)] for k in range(1, len(order))]
    lossy = [n for n in ring if n in mine][:LOSS_PEERS]
    each = loss_probes(len(lossy)) if loss_per_peer is None else loss_per_peer
    peers = [{"label": h.name, "address": h.address, "tcp_port": ready[h.name]["tcp_port"],
              "udp_port": ready[h.name]["udp_port"], "mtu": ready[h.name].get("mtu", h.mtu),
              "loss_probes": each if h.name in lossy else 0}
             for h in hosts if h.name in mine and ready.get(h.name)]
    return {"peers": peers, "budget_s": round(budget_s, 2)}
