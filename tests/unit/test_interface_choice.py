"""The interface for the job: one subnet through which every host reaches every other.

The recorded facts in facts/ are a three-host cluster: eth0 10.231.0.11-13/24 on every host,
a docker0 bridge 172.17.0.1/16 on every host, and h2 has eth1 10.232.2.1/24 that reaches nobody.
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

from preflight import agents
from preflight.active.networks import measured, pick_pairs
from preflight.checks import interface
from preflight.choice import Carried, choose_interface, contenders, rate_text
from preflight.errors import UserError
from preflight.facts import Facts
from preflight.result import Status

FACTS = Path(__file__).with_name("facts")
HOSTS = ["h1", "h2", "h3"]
RESOLVED = {"h1": {"10.231.0.11"}, "h2": {"10.231.0.12"}, "h3": {"10.231.0.13"}}


def recorded(host: str) -> dict:
    return json.loads((FACTS / f"{host}.json").read_text())


def cluster(edit=None, hosts=HOSTS) -> dict[str, Facts]:
    """Facts of the recorded hosts; edit(host, raw_dict) may change them first."""
    out = {}
    for host in hosts:
        raw = copy.deepcopy(recorded(host))
        if edit:
            edit(host, raw)
        out[host] = Facts.from_dict(raw)
    return out


def iface(raw: dict, name: str) -> dict:
    return next(i for i in raw["interfaces"] if i["name"] == name)


def add_iface(raw: dict, name: str, cidr: str, **extra) -> None:
    entry = {"name": name, "ipv4": [cidr], "ipv6": [], "mac": None, "mtu": 1500, "speed": 1000,
             "isup": True, "loopback": False, "virtual": False, "bridge": False}
    entry.update(extra)
    raw["interfaces"].append(entry)


def by_id(results, check_id):
    return next(r for r in results if r.id == check_id)


def test_docker0_on_every_host_is_not_chosen():
    choice = choose_interface(cluster(), RESOLVED, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    assert choice.names == {"h1": "eth0", "h2": "eth0", "h3": "eth0"}
    assert choice.addresses == {"h1": "10.231.0.11", "h2": "10.231.0.12", "h3": "10.231.0.13"}
    assert any(p.startswith("docker0 172.17.0.1 on every host") for p in choice.passed_over_for())


def test_docker0_is_not_chosen_even_when_it_outranks_eth0():
    def fast_physical_docker(host, raw):
        iface(raw, "docker0").update(virtual=False, speed=100000)
    choice = choose_interface(cluster(fast_physical_docker), {}, HOSTS)
    assert choice.cidr == "10.231.0.0/24"


def test_second_interface_that_reaches_no_other_host_is_passed_over_and_named():
    facts = cluster()
    choice = choose_interface(facts, RESOLVED, HOSTS)
    detail = by_id(interface.check_choice("h2", choice, facts["h2"]), "interface.choice").detail
    assert "eth1 10.232.2.0/24 on h2 reaches no other host" in detail
    assert "docker0 172.17.0.1 on every host" in detail
    assert "lo (loopback)" in detail
    h1_detail = by_id(interface.check_choice("h1", choice, facts["h1"]), "interface.choice").detail
    assert "eth1" not in h1_detail


def test_interface_names_may_differ_when_the_subnet_is_shared():
    def rename(host, raw):
        if host == "h2":
            iface(raw, "eth0")["name"] = "ens4"
    facts = cluster(rename)
    choice = choose_interface(facts, RESOLVED, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    assert choice.names["h2"] == "ens4"
    assert choice.interface == "eth0,ens4"
    result = by_id(interface.check_choice("h1", choice, facts["h1"]), "interface.choice")
    assert result.status is Status.PASS
    assert "names differ: h1 eth0, h2 ens4, h3 eth0" in result.detail
    assert "Open MPI gets the CIDR, Gloo/NCCL the names" in result.detail


def test_public_address_on_the_chosen_interface_warns_with_a_remedy():
    def public(host, raw):
        n = HOSTS.index(host) + 1
        iface(raw, "eth0")["ipv4"] = [f"8.20.0.{n}/24"]
    facts = cluster(public)
    choice = choose_interface(facts, {}, HOSTS)
    assert choice.cidr == "8.20.0.0/24"
    result = by_id(interface.check_choice("h1", choice, facts["h1"]), "interface.public")
    assert result.status is Status.WARN
    assert "public" in result.detail
    assert result.remedy


def test_private_address_passes_the_public_check():
    facts = cluster()
    choice = choose_interface(facts, RESOLVED, HOSTS)
    assert by_id(interface.check_choice("h1", choice, facts["h1"]),
                 "interface.public").status is Status.PASS


def test_host_without_an_address_in_the_chosen_subnet_fails_with_a_remedy():
    def move_h3(host, raw):
        if host == "h3":
            iface(raw, "eth0")["ipv4"] = ["192.168.77.3/24"]
    facts = cluster(move_h3)
    choice = choose_interface(facts, RESOLVED, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    assert "h3" not in choice.names
    result = by_id(interface.check_choice("h3", choice, facts["h3"]), "interface.choice")
    assert result.status is Status.FAIL
    assert "h3 has no address in 10.231.0.0/24" in result.detail
    assert "give h3 an address in 10.231.0.0/24" in result.remedy


def test_no_subnet_shared_by_two_hosts_fails_every_host():
    def scatter(host, raw):
        n = HOSTS.index(host) + 1
        iface(raw, "eth0")["ipv4"] = [f"10.{n}.0.1/24"]
    facts = cluster(scatter)
    choice = choose_interface(facts, {}, HOSTS)
    assert choice.cidr is None
    assert choice.interface is None
    for host in HOSTS:
        result = interface.check_choice(host, choice, facts[host])[0]
        assert result.status is Status.FAIL
        assert "put the hosts on one network" in result.remedy


def test_one_host_alone_talks_over_loopback():
    facts = cluster(hosts=["h1"])
    choice = choose_interface(facts, {}, ["h1"])
    assert (choice.interface, choice.cidr) == ("lo", "127.0.0.0/8")
    result = by_id(interface.check_choice("h1", choice, facts["h1"]), "interface.choice")
    assert result.status is Status.PASS
    assert result.detail.startswith("one host: processes talk over loopback")


def test_the_subnet_reaching_more_hosts_wins_over_a_faster_one():
    def fast_pair(host, raw):
        if host in ("h1", "h2"):
            add_iface(raw, "ib0", f"10.50.0.{HOSTS.index(host) + 1}/24", speed=100000)
    choice = choose_interface(cluster(fast_pair), RESOLVED, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    assert "ib0 10.50.0.0/24 reaches 2 of 3 hosts" in choice.passed_over_for("h1")


def test_tie_goes_to_the_subnet_the_host_names_resolve_to():
    def second_net(host, raw):
        add_iface(raw, "eth2", f"10.60.0.{HOSTS.index(host) + 1}/24", speed=100000)
    facts = cluster(second_net)
    assert choose_interface(facts, RESOLVED, HOSTS).cidr == "10.231.0.0/24"
    resolved_there = {h: {f"10.60.0.{i + 1}"} for i, h in enumerate(HOSTS)}
    assert choose_interface(facts, resolved_there, HOSTS).cidr == "10.60.0.0/24"


def test_tie_goes_to_physical_over_virtual_then_to_the_faster_link():
    def two_nets(host, raw):
        n = HOSTS.index(host) + 1
        iface(raw, "eth0").update(virtual=True, speed=1000)
        add_iface(raw, "enp1", f"10.70.0.{n}/24", virtual=False, speed=1000)
    assert choose_interface(cluster(two_nets), {}, HOSTS).cidr == "10.70.0.0/24"

    def faster_eth0(host, raw):
        two_nets(host, raw)
        iface(raw, "eth0").update(virtual=False, speed=25000)
    assert choose_interface(cluster(faster_eth0), {}, HOSTS).cidr == "10.231.0.0/24"


def test_link_local_and_down_interfaces_are_never_candidates():
    def noise(host, raw):
        n = HOSTS.index(host) + 1
        add_iface(raw, "eth5", f"169.254.0.{n}/16", speed=100000)
        add_iface(raw, "eth6", f"10.80.0.{n}/24", isup=False, speed=100000)
    choice = choose_interface(cluster(noise), {}, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    over = choice.passed_over_for("h1")
    assert "eth5 (link-local)" in over
    assert "eth6 (down)" in over


def test_the_same_address_on_two_hosts_marks_only_that_subnet_as_a_decoy():
    def clash(host, raw):
        if host in ("h1", "h2"):
            add_iface(raw, "virbr0", "192.168.122.1/24", virtual=True, bridge=True)
    choice = choose_interface(cluster(clash), RESOLVED, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    assert any(p.startswith("virbr0 192.168.122.1 on h1, h2") for p in choice.passed_over_for())


def test_only_one_host_answering_still_gets_its_best_interface():
    facts = cluster(hosts=["h2"])
    choice = choose_interface(facts, RESOLVED, HOSTS)
    assert choice.cidr == "10.231.0.0/24"
    assert choice.names == {"h2": "eth0"}


def test_mtu_of_the_chosen_interface_is_exposed_per_host():
    def jumbo(host, raw):
        if host == "h3":
            iface(raw, "eth0")["mtu"] = 9000
    choice = choose_interface(cluster(jumbo), RESOLVED, HOSTS)
    assert choice.mtus == {"h1": 1500, "h2": 1500, "h3": 9000}


def test_summary_lists_every_interface_compactly():
    result = interface.check_summary(cluster()["h2"])
    assert result.status is Status.PASS
    assert ("eth0 10.231.0.12/24 (private) fe80::ff:fe00:12/64 (link-local), "
            "mac 02:00:0a:e7:00:12, mtu 1500, 10 Gb/s, up, virtual") in result.detail
    assert ("docker0 172.17.0.1/16 (private), mac 02:42:ac:11:00:01, mtu 1500, speed unknown, "
            "up, bridge") in result.detail


def test_a_lone_answering_host_prefers_its_real_interface_over_a_bridge():
    def unknown_speeds(host, raw):
        for entry in raw["interfaces"]:
            entry["speed"] = 0
    choice = choose_interface(cluster(unknown_speeds, hosts=["h1"]), {}, HOSTS)
    assert choice.names == {"h1": "eth0"}


def test_one_remote_host_alone_gets_its_real_interface_not_loopback():
    facts = cluster(hosts=["h2"])
    choice = choose_interface(facts, RESOLVED, ["h2"], loopback_ok=False)
    assert (choice.cidr, choice.names) == ("10.231.0.0/24", {"h2": "eth0"})


# --- several networks reach every host: the race decides (issue: choose the fastest) -----------

def with_data_net(host, raw):
    add_iface(raw, "eth2", f"10.233.0.{10 + HOSTS.index(host) + 1}/24")


def carried(cidr, name, MBps=None, error=None, pairs=(("h1", "h2"),)):
    entry = {"error": error} if error else {"MBps": MBps, "rtt_ms": 0.1}
    return Carried(cidr, name, tuple({"from": a, "to": b, **entry} for a, b in pairs))


def test_two_networks_to_every_host_are_contenders_in_todays_order():
    rivals = contenders(cluster(with_data_net), RESOLVED)
    assert [r.cidr for r in rivals] == ["10.231.0.0/24", "10.233.0.0/24"]
    assert rivals[1].addresses["h3"] == "10.233.0.13"
    assert contenders(cluster(), RESOLVED) == []  # eth1 on h2 alone reaches nobody


def test_the_network_that_carries_most_is_chosen_and_the_line_gives_both_rates():
    race = [carried("10.231.0.0/24", "eth0", 11.0), carried("10.233.0.0/24", "eth2", 1100.0)]
    choice = choose_interface(cluster(with_data_net), RESOLVED, HOSTS, carried=race)
    assert choice.cidr == "10.233.0.0/24"
    assert choice.names == {"h1": "eth2", "h2": "eth2", "h3": "eth2"}
    line = choice.passed_over_for("h1")[0]
    assert line == ("measured eth0 10.231.0.0/24: 11 MB/s, 0.1 ms; eth2 10.233.0.0/24: "
                    "1.1 GB/s, 0.1 ms: eth2 chosen")
    assert not any("ranked lower" in p for p in choice.passed_over_for())


def test_a_tie_keeps_todays_order():
    race = [carried("10.231.0.0/24", "eth0", 900.0), carried("10.233.0.0/24", "eth2", 1100.0)]
    choice = choose_interface(cluster(with_data_net), RESOLVED, HOSTS, carried=race)
    assert choice.cidr == "10.231.0.0/24"  # 1.2x apart is noise, not a faster network


def test_a_network_where_a_pair_could_not_connect_that_did_on_another_is_passed_over():
    race = [carried("10.231.0.0/24", "eth0", 11.0),
            carried("10.233.0.0/24", "eth2", error="could not connect: timed out")]
    choice = choose_interface(cluster(with_data_net), RESOLVED, HOSTS, carried=race)
    assert choice.cidr == "10.231.0.0/24"
    assert "eth2 10.233.0.0/24: nothing crossed (h1->h2: could not connect: timed out)" in \
        choice.passed_over_for("h2")[0]


def test_a_pair_that_fails_everywhere_does_not_disqualify_a_network():
    race = [Carried("10.231.0.0/24", "eth0", ({"from": "h1", "to": "h2", "error": "refused"},
                                              {"from": "h3", "to": "h1", "MBps": 11.0,
                                               "rtt_ms": 0.2})),
            Carried("10.233.0.0/24", "eth2", ({"from": "h1", "to": "h2", "error": "refused"},
                                              {"from": "h3", "to": "h1", "MBps": 900.0,
                                               "rtt_ms": 0.1}))]
    choice = choose_interface(cluster(with_data_net), RESOLVED, HOSTS, carried=race)
    assert choice.cidr == "10.233.0.0/24"  # h1->h2 is a host's fault: the mesh will say whose


def test_interface_forces_the_choice_by_name_or_cidr_with_a_note_when_slower():
    race = [carried("10.231.0.0/24", "eth0", 11.0), carried("10.233.0.0/24", "eth2", 1100.0)]
    for forced in ("eth0", "10.231.0.0/24", "10.231.0.12/32"):
        choice = choose_interface(cluster(with_data_net), RESOLVED, HOSTS, forced=forced,
                                  carried=race)
        assert choice.cidr == "10.231.0.0/24", forced
        note = choice.passed_over_for("h1")[0]
        assert note.startswith(f"--interface {forced} forced although another network is "
                               "faster: eth0 10.231.0.0/24: 11 MB/s")
        assert "without --interface eth2 would be chosen" in note


def test_interface_that_no_host_has_is_bad_input_naming_what_the_hosts_have():
    with pytest.raises(UserError) as caught:
        choose_interface(cluster(with_data_net), RESOLVED, HOSTS, forced="ib0")
    assert "--interface ib0: no host that answered" in caught.value.message
    assert "eth0 10.231.0.0/24" in caught.value.remedy and "eth2 10.233.0.0/24" in \
        caught.value.remedy
    with pytest.raises(UserError, match="per-host bridge"):
        choose_interface(cluster(with_data_net), RESOLVED, HOSTS, forced="docker0")


def test_rates_read_in_sensible_units():
    assert [rate_text(x) for x in (0.42, 11.0, 117.4, 1100.0)] == \
        ["0.4 MB/s", "11 MB/s", "117 MB/s", "1.1 GB/s"]


def test_race_pairs_are_disjoint_first_then_from_the_ring():
    assert pick_pairs(["h1", "h2"], 2) == [("h1", "h2")]
    assert pick_pairs(["h1", "h2", "h3"], 2) == [("h1", "h2"), ("h2", "h3")]
    assert pick_pairs(["h1", "h2", "h3", "h4", "h5"], 2) == [("h1", "h2"), ("h3", "h4")]
    assert pick_pairs(["h1", "h2", "h3", "h4"], 4) == [("h1", "h2"), ("h3", "h4"),
                                                       ("h2", "h3"), ("h4", "h1")]


def test_burst_agent_measures_a_rate_over_loopback():
    """The agent itself, both roles on this machine's loopback (no cluster needed)."""
    argv = [sys.executable, "-c", agents.source("burst")]
    receiver = subprocess.Popen([*argv, "--listen", "127.0.0.1", "--wait-s", "5"],
                                stdout=subprocess.PIPE, text=True)
    try:
        port = json.loads(receiver.stdout.readline())["port"]
        sent = json.loads(subprocess.run(
            [*argv, "--to", f"127.0.0.1:{port}", "--source", "127.0.0.1", "--seconds", "0.2"],
            capture_output=True, text=True, timeout=20).stdout)
        got = json.loads(receiver.stdout.readline())
    finally:
        receiver.kill()
        receiver.wait()
    rate = measured(sent, got)
    assert rate["MBps"] > 20 and rate["rtt_ms"] < 50, (sent, got)
    assert got["bytes"] == sent["sent"]
    assert measured({"error": "could not connect: timed out"}, None) == {
        "error": "could not connect: timed out"}
