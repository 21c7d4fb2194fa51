"""mesh.tcp, mtu.path and loss.path: who is blamed for failing pairs; real agents on loopback."""

from __future__ import annotations

import json
import sys
import time

import pytest

from preflight.active.mesh import run_mesh
from preflight.agents import parse_event
from preflight.checks.blame import blame
from preflight.checks.loss import loss_results
from preflight.checks.mesh import MeshHost, MeshOutcome, PeerProbe, parse_probes, tcp_results
from preflight.checks.mtu import mtu_results, pair_mtus, usual_mtu
from preflight.remote import Ssh
from preflight.result import Status

HOSTS = tuple(MeshHost(f"h{i}", f"10.231.0.{10 + i}", "eth0", 1500) for i in (1, 2, 3))


def pair(a: str, b: str) -> frozenset[str]:
    return frozenset((a, b))


def probe(src: str, dst: str, tcp: str = "ok", path_mtu: int | None = 1500,
          mtu_ok: bool = True, **more) -> PeerProbe:
    return PeerProbe(src=src, dst=dst, tcp=tcp, port=41234, rtt_ms=0.1 if tcp == "ok" else None,
                     mtu_ok=mtu_ok, path_mtu=path_mtu,
                     mtu_error="" if mtu_ok else "no echo at MTU 1500", **more)


def all_pairs(hosts=HOSTS, **overrides) -> list[PeerProbe]:
    """Every directed probe healthy, except those given as {(src, dst): PeerProbe}."""
    probes = overrides.get("probes", {})
    return [probes.get((a.name, b.name), probe(a.name, b.name))
            for a in hosts for b in hosts if a is not b]


def outcome(probes: list[PeerProbe], hosts=HOSTS, not_started=None, mtus=None) -> MeshOutcome:
    return MeshOutcome(tuple(hosts), not_started or {},
                       mtus or {h.name: h.mtu for h in hosts}, tuple(probes))


def statuses(results) -> dict[str, Status]:
    return {name: r.status for name, r in results.items()}


# --- blame: the odd one out ---------------------------------------------------------------------

def test_the_host_common_to_every_failing_pair_is_blamed_alone():
    assert blame([pair("h1", "h2"), pair("h2", "h3")]) == {"h2"}


def test_one_failing_pair_without_a_tiebreak_names_both_hosts():
    assert blame([pair("h1", "h2")]) == {"h1", "h2"}


def test_a_tiebreak_picks_the_host_others_cannot_reach():
    assert blame([pair("h1", "h2")], {"h1": -1, "h2": 1}) == {"h2"}


def test_when_every_pair_fails_every_host_is_named():
    assert blame([pair("h1", "h2"), pair("h1", "h3"), pair("h2", "h3")]) == {"h1", "h2", "h3"}


def test_two_broken_hosts_among_four_are_both_found_and_only_they():
    failing = [pair(a, b) for a in ("h3", "h4") for b in ("h1", "h2", "h3", "h4") if a != b]
    assert blame(failing) == {"h3", "h4"}


def test_no_failing_pairs_blames_nobody():
    assert blame([]) == set()


# --- mesh.tcp ------------------------------------------------------------------------------------

def test_firewall_on_h2_fails_only_h2_with_the_ports_and_a_remedy():
    blocked = {("h1", "h2"): probe("h1", "h2", tcp="timed out"),
               ("h3", "h2"): probe("h3", "h2", tcp="timed out")}
    results = tcp_results(outcome(all_pairs(probes=blocked)))
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.FAIL, "h3": Status.PASS}
    assert "TCP to h2 port 41234 timed out from h1, h3 while ssh works" in results["h2"].detail
    assert "a firewall drops ports above 1024" in results["h2"].detail
    assert "open TCP ports 1024-65535" in results["h2"].remedy
    assert "iptables -I INPUT -p tcp -s 10.231.0.11,10.231.0.13 -j ACCEPT" in results["h2"].remedy
    assert "h2 fails this check" in results["h1"].detail


def test_two_hosts_where_only_one_direction_fails_blames_the_receiver():
    hosts = HOSTS[:2]
    blocked = {("h1", "h2"): probe("h1", "h2", tcp="refused")}
    results = tcp_results(outcome(all_pairs(hosts, probes=blocked), hosts=hosts))
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.FAIL}
    assert "refused from h1" in results["h2"].detail


def test_a_host_some_peers_reach_is_not_said_to_have_a_plain_firewall():
    blocked = {("h2", "h3"): probe("h2", "h3", tcp="timed out")}
    results = tcp_results(outcome(all_pairs(probes=blocked)))
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.FAIL}
    assert "from h2 while h1 got through" in results["h3"].detail
    assert "ping -c 100 h3 from h2" in results["h3"].remedy


def test_a_host_that_cannot_connect_out_is_told_about_outgoing_traffic():
    blocked = {("h3", "h1"): probe("h3", "h1", tcp="timed out"),
               ("h3", "h2"): probe("h3", "h2", tcp="timed out")}
    results = tcp_results(outcome(all_pairs(probes=blocked)))
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.FAIL}
    assert "outgoing" in results["h3"].detail
    assert "iptables -I OUTPUT" in results["h3"].remedy


def test_healthy_mesh_passes_with_the_latency_to_each_peer():
    results = tcp_results(outcome(all_pairs()))
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.PASS}
    assert "reaches 2 peers, median round trip 0.10 ms (h2 0.10, h3 0.10)" in results["h1"].detail


def test_a_host_whose_agent_never_started_fails_and_its_peers_do_not():
    hosts_up = HOSTS[:2]
    probes = [p for p in all_pairs() if p.src in ("h1", "h2")]
    results = tcp_results(outcome(probes, not_started={"h3": "ssh: connect timed out"}))
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.FAIL}
    assert "ssh: connect timed out" in results["h3"].detail
    assert "ssh h3" in results["h3"].remedy
    assert all("h3" in results[h.name].detail for h in hosts_up)


# --- mtu.path ------------------------------------------------------------------------------------

def mtu_broken(host: str, path_mtu: int, hosts=HOSTS) -> dict:
    """Probes as they come back when host's MTU is path_mtu and the others' 1500."""
    return {(a.name, b.name): probe(a.name, b.name, path_mtu=path_mtu, mtu_ok=False)
            for a in hosts for b in hosts if a is not b and host in (a.name, b.name)
            and a.name != host}


def test_mtu_1400_on_h3_fails_only_h3_and_names_the_path_and_the_fix():
    mtus = {"h1": 1500, "h2": 1500, "h3": 1400}
    results = mtu_results(HOSTS, mtus, all_pairs(probes=mtu_broken("h3", 1400)), {})
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.FAIL}
    assert results["h3"].detail == ("packets larger than 1400 bytes never cross between h3 and "
                                    "h1, h2, every time; eth0 MTU is 1400 on h3 and 1500 on "
                                    "the others")
    assert results["h3"].remedy == "set the same MTU on every host: ip link set eth0 mtu 1500 on h3"


def test_with_two_hosts_of_different_mtu_the_smaller_one_is_the_odd_one_out():
    hosts = HOSTS[:2]
    mtus = {"h1": 1500, "h2": 1400}
    results = mtu_results(hosts, mtus, all_pairs(hosts, probes=mtu_broken("h2", 1400, hosts)),
                          {})
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.FAIL}


def test_a_path_narrower_than_every_interface_fails_everyone_and_points_at_the_network():
    probes = [probe(a.name, b.name, path_mtu=1400, mtu_ok=False)
              for a in HOSTS for b in HOSTS if a is not b]
    results = mtu_results(HOSTS, {h.name: 1500 for h in HOSTS}, probes, {})
    assert set(statuses(results).values()) == {Status.FAIL}
    assert "switch or tunnel" in results["h1"].remedy


def test_no_udp_echo_at_any_size_is_a_warning_not_a_failure():
    silent = {("h1", "h2"): probe("h1", "h2", path_mtu=None, mtu_ok=False),
              ("h2", "h1"): probe("h2", "h1", path_mtu=None, mtu_ok=False)}
    results = mtu_results(HOSTS[:2], {"h1": 1500, "h2": 1500},
                          all_pairs(HOSTS[:2], probes=silent), {})
    assert set(statuses(results).values()) == {Status.WARN}
    assert "ping -M do -s 1472" in results["h1"].remedy


def test_the_smallest_size_seen_either_way_is_the_path_mtu():
    probes = [probe("h1", "h2", path_mtu=1450, mtu_ok=False),
              probe("h2", "h1", path_mtu=1400, mtu_ok=False)]
    assert pair_mtus(probes) == {pair("h1", "h2"): 1400}


def limited(src: str, dst: str, state: str, full=(0, 10), limit=(10, 10)) -> PeerProbe:
    return probe(src, dst, path_mtu=1400, mtu_ok=state == "ok", mtu_state=state,
                 mtu_counts={"full": full, "limit": limit})


def test_a_limit_that_repeats_fails_and_says_what_was_counted():
    probes = {(a, "h3"): limited(a, "h3", "limit") for a in ("h1", "h2")}
    results = mtu_results(HOSTS, {"h1": 1500, "h2": 1500, "h3": 1400},
                          all_pairs(probes=probes), {})
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.FAIL}
    assert "(20 of 20 full-size datagrams lost, 20 of 20 at the smaller size back)" in \
        results["h3"].detail


def test_full_size_packets_that_cross_now_and_then_are_loss_not_an_mtu_limit():
    # The agent saw 3 of 10 full-size datagrams cross after five were lost: state "ok".
    probes = {("h1", "h3"): limited("h1", "h3", "ok", full=(3, 10))}
    results = mtu_results(HOSTS, {h.name: 1500 for h in HOSTS}, all_pairs(probes=probes), {})
    assert set(statuses(results).values()) == {Status.PASS}


def test_too_few_echoes_to_tell_loss_from_a_limit_warns_and_never_advises_the_mtu():
    probes = {("h1", "h3"): limited("h1", "h3", "unclear", limit=(1, 10))}
    results = mtu_results(HOSTS, {h.name: 1500 for h in HOSTS}, all_pairs(probes=probes), {})
    assert statuses(results) == {"h1": Status.WARN, "h2": Status.PASS, "h3": Status.WARN}
    warned = results["h3"]
    assert "ip link set" not in warned.remedy and "ping -M do" in warned.remedy


def test_a_host_losing_packets_at_random_is_not_judged_on_its_mtu():
    probes = {(a, "h3"): limited(a, "h3", "limit") for a in ("h1", "h2")}
    results = mtu_results(HOSTS, {h.name: 1500 for h in HOSTS}, all_pairs(probes=probes), {},
                          lossy={"h3"})
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.SKIP}
    assert "loss.path" in results["h3"].detail


# --- loss.path ----------------------------------------------------------------------------------

FOUR = [MeshHost(f"h{i}", f"10.0.0.{i}", "eth0", 1500) for i in range(1, 5)]


def burst(src: str, dst: str, lost: int, sent: int = 100) -> PeerProbe:
    return probe(src, dst, loss_sent=sent, loss_echoed=sent - lost)


def bursts(lost: dict[frozenset, int], hosts=FOUR, sent: int = 100) -> list[PeerProbe]:
    """Every directed burst of `sent`, losing lost[pair] each way."""
    return [burst(a.name, b.name, lost.get(frozenset((a.name, b.name)), 0), sent)
            for a in hosts for b in hosts if a is not b]


def test_a_host_that_loses_ten_percent_fails_alone_with_its_rate_and_a_cable_remedy():
    lossy = {frozenset(("h3", h)): 10 for h in ("h1", "h2", "h4")}
    results = loss_results(FOUR, bursts(lossy), {})
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.FAIL,
                                 "h4": Status.PASS}
    assert results["h3"].detail.startswith("60 of 600 (10.0%) small UDP round trips between h3")
    assert "against 0 of 600 (0.0%) among the other hosts" in results["h3"].detail
    assert "cable" in results["h3"].remedy and "mtu" not in results["h3"].remedy
    assert results["h1"].detail.endswith("h3 fails this check")


def test_loss_between_the_two_thresholds_warns():
    lossy = {frozenset(("h2", h)): 1 for h in ("h1", "h3", "h4")}
    results = loss_results(FOUR, bursts(lossy, FOUR, sent=400), {})
    assert statuses(results)["h2"] is Status.WARN  # 6 of 2,400: 0.25%


def test_one_bad_link_condemns_one_end_and_keeps_the_other():
    results = loss_results(FOUR, bursts({frozenset(("h1", "h4")): 20}), {})
    failing = {n for n, r in results.items() if r.status is Status.FAIL}
    assert len(failing) == 1 and failing <= {"h1", "h4"}


def test_a_lost_probe_or_two_on_a_busy_machine_is_no_verdict():
    results = loss_results(FOUR, bursts({frozenset(("h1", "h2")): 1}), {})
    assert set(statuses(results).values()) == {Status.PASS}


def test_the_usual_mtu_is_the_most_common_one():
    assert usual_mtu([1500, 1500, 9000]) == 1500
    assert usual_mtu([1500, 1400]) == 1500


def test_a_host_not_measured_is_skipped_for_mtu():
    results = mtu_results(HOSTS, {}, [p for p in all_pairs() if "h3" not in (p.src, p.dst)],
                          {"h3": "ssh failed"})
    assert statuses(results) == {"h1": Status.PASS, "h2": Status.PASS, "h3": Status.SKIP}


# --- the agents' JSON -----------------------------------------------------------------------------

def test_agent_lines_that_are_not_events_are_ignored():
    assert parse_event("Welcome to Ubuntu\n") is None
    assert parse_event("{not json\n") is None
    assert parse_event('{"no": "event"}') is None
    assert parse_event('{"event": "ready", "tcp_port": 40001}\n') == {
        "event": "ready", "tcp_port": 40001}


def test_an_agent_result_becomes_one_probe_per_peer():
    line = json.dumps({"event": "result", "label": "h1", "mtu": 1500, "peers": [
        {"peer": "h2", "port": 40001, "tcp": "ok", "rtt_ms": 0.2, "mtu_ok": True,
         "path_mtu": 1500, "mtu_error": ""},
        {"peer": "h3", "port": 40002, "tcp": "refused", "rtt_ms": None, "mtu_ok": False,
         "path_mtu": 1400, "mtu_error": "no echo at MTU 1500"}]})
    probes = parse_probes(parse_event(line))
    assert probes[0] == PeerProbe("h1", "h2", "ok", 40001, 0.2, True, 1500, "")
    assert probes[1].tcp == "refused" and not probes[1].tcp_ok and probes[1].path_mtu == 1400


# --- real agents on this machine --------------------------------------------------------------

LOCAL = [MeshHost("a", "127.0.0.1", "lo", 65536, ssh_host="localhost"),
         MeshHost("b", "127.0.0.2", "lo", 65536, ssh_host="localhost")]


@pytest.fixture
def ssh():
    with Ssh() as runner:
        yield runner


def test_two_local_agents_reach_each_other_and_pass_both_checks(ssh):
    results = run_mesh(ssh, LOCAL, python_for=lambda _host: sys.executable, timeout_s=10)
    assert {name: [r.status for r in checks] for name, checks in results.items()} == {
        "a": [Status.PASS] * 3, "b": [Status.PASS] * 3}
    assert [r.id for r in results["a"]] == ["mesh.tcp", "mtu.path", "loss.path"]
    assert results["a"][2].detail.startswith("0 of 400 (0.0%) small UDP round trips lost")
    assert "reaches 1 peer, median round trip" in results["a"][0].detail
    assert "65536-byte packets with don't-fragment cross to b" in results["a"][1].detail


def test_an_agent_that_cannot_start_fails_only_its_host_and_quickly(ssh):
    # 192.0.2.99 is not on this machine (TEST-NET-1): the agent cannot bind it and exits.
    hosts = [*LOCAL, MeshHost("c", "192.0.2.99", "lo", 65536, ssh_host="localhost")]
    start = time.monotonic()
    results = run_mesh(ssh, hosts, timeout_s=10)
    assert time.monotonic() - start < 10
    assert {name: checks[0].status for name, checks in results.items()} == {
        "a": Status.PASS, "b": Status.PASS, "c": Status.FAIL}
    assert "Cannot assign requested address" in results["c"][0].detail
    assert results["c"][1].status is Status.SKIP


def test_one_host_is_no_mesh(ssh):
    results = run_mesh(ssh, LOCAL[:1])
    assert [(r.id, r.status, r.detail) for r in results["a"]] == [
        ("mesh.tcp", Status.SKIP, "one host: no mesh"),
        ("mtu.path", Status.SKIP, "one host: no mesh"),
        ("loss.path", Status.SKIP, "one host: no mesh")]


# --- the second round: confirm before condemning ------------------------------------------------

def test_a_verdict_that_passes_in_the_second_round_warns_and_says_both_rounds():
    from preflight.active.mesh import confirmed
    from preflight.result import failed, passed

    first = [failed("mesh.tcp", "TCP to h3 port 40000 timed out from h1", "open the ports"),
             passed("mtu.path", "1500-byte packets cross"), passed("loss.path", "0 of 600")]
    again = [passed("mesh.tcp", "TCP on eth0 above port 1024 reaches 3 peers"),
             passed("mtu.path", "1500-byte packets cross"), passed("loss.path", "0 of 600")]
    result = confirmed(first, again, "with h1, h2, h4", 20)
    assert [r.status for r in result] == [Status.WARN, Status.PASS, Status.PASS]
    assert result[0].detail == ("TCP on eth0 above port 1024 reaches 3 peers, but only in a "
                                "second round (with h1, h2, h4, 20 s); the first, with every "
                                "host at once, found: TCP to h3 port 40000 timed out from h1")


def test_a_verdict_seen_again_in_the_second_round_stands_and_says_so():
    from preflight.active.mesh import confirmed
    from preflight.result import failed

    first = [failed("loss.path", "60 of 600 (10.0%) lost", "check the cable")]
    again = [failed("loss.path", "80 of 800 (10.0%) lost", "check the cable")]
    result = confirmed(first, again, "with h1, h2", 20)
    assert result[0].status is Status.FAIL
    assert result[0].detail == "80 of 800 (10.0%) lost (seen again in a second round, with h1, h2)"
