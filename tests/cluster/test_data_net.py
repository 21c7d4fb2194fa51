"""The data network (`up --data-net`): a second NIC eth2 on hosts wired to a switch of its own
(bridge br1), and its faults data-dead and data-rate, which leave the cluster network alone.

A cluster of its own (prefix hvdnet, 3 hosts, eth2 on h1 and h2 only), so the session cluster is
never touched; all traffic stays between its namespaces. The first tests need no root.
"""

from __future__ import annotations

import re
import subprocess

import pytest
from conftest import cli, skip_unless_cluster_possible, transfer_s

from preflight.errors import Exit, UserError
from simcluster import Cluster, UpOptions

PREFIX = "hvdnet"  # not hvdn: that may be the session cluster of a run beside it
NBYTES = 3 * 10**6
RATE_MBIT = 20  # 3 MB take 1.2 s at this rate, well under 0.1 s unthrottled


# --- without root --------------------------------------------------------------------------

def test_options_round_trip_and_old_descriptions_stay_the_same():
    plain = UpOptions.parse("3", second_if="h2")
    assert "data-net" not in plain.describe("hvx")  # as before the option existed
    options = UpOptions.parse("3", second_if="h2", data_net="h3,h1")
    assert options.data_net == ("h1", "h3")
    assert options.describe("hvx") == plain.describe("hvx") + " data-net=h1,h3"
    assert UpOptions.from_json(options.to_json()) == options
    old = {k: v for k, v in plain.to_json().items() if k != "data_net"}  # an older state.json
    assert UpOptions.from_json(old) == plain
    assert UpOptions.parse("2", data_net="all").data_net == ("h1", "h2")


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"data_net": "h4"}, "--data-net: unknown host 'h4'"),
    ({"ifname": "h1=eth2"}, "'eth2' is taken by the simulation")])
def test_bad_data_net_options_are_refused(kwargs, says):
    with pytest.raises(UserError) as caught:
        UpOptions.parse("3", **kwargs)
    assert caught.value.code == Exit.BAD_INPUT and says in str(caught.value)


# --- on a cluster of its own ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster(PREFIX, tmp_path_factory.mktemp(PREFIX) / "state", log=lambda line: None)
    try:
        cluster.up(UpOptions.parse("3", data_net="h1,h2"))
        yield cluster
    finally:
        cluster.down()


def data_address(cluster: Cluster, host: str) -> str:
    shown = cluster.exec(host, "ip", "-4", "-br", "addr", "show", "eth2").stdout
    match = re.search(r"([\d.]+)/24", shown)
    assert match, shown
    return match.group(1)


def pings(cluster: Cluster, src: str, address: str) -> bool:
    return cluster.exec(src, "ping", "-c", "1", "-W", "1", address).returncode == 0




def test_listed_hosts_get_eth2_on_their_own_switch_without_names(sim):
    assert [data_address(sim, h) for h in ("h1", "h2")] == ["10.233.0.11", "10.233.0.12"]
    assert sim.exec("h3", "ip", "link", "show", "eth2").returncode != 0
    assert pings(sim, "h1", "10.233.0.12") and pings(sim, "h2", "10.233.0.11")
    bridge = subprocess.run(["ip", "-n", sim.settings.switch_ns, "-br", "link", "show",
                             "master", "br1"], capture_output=True, text=True).stdout
    assert sorted(line.split("@")[0] for line in bridge.splitlines()) == ["data-h1", "data-h2"]
    # The names stay on eth0; nothing of the data network is in the root namespace.
    assert sim.exec("h1", "getent", "hosts", "h2").stdout.split()[0] == "10.231.0.12"
    assert "10.233." not in (sim.settings.etc_dir("h1") / "hosts").read_text()
    root = subprocess.run(["ip", "-br", "addr"], capture_output=True, text=True).stdout
    assert "10.233." not in root and "data-h" not in root and "br1" not in root
    status = "\n".join(sim.status_lines())
    assert re.search(r"^h2\s.*10\.231\.0\.12\s+up \(pid \d+\)\s+eth2=10\.233\.0\.12/24$", status,
                     re.M), status
    assert "data-net=h1,h2" in status


def test_data_dead_cuts_the_data_network_only(sim):
    with sim.fault("h2", "data-dead"):
        assert not pings(sim, "h1", "10.233.0.12")
        assert pings(sim, "h1", "10.231.0.12")  # the cluster network is untouched
        link = sim.exec("h2", "ip", "-br", "addr", "show", "eth2").stdout
        assert " UP " in link and "10.233.0.12/24" in link  # up, addressed, yet cut off
        sim.fault("h2", "data-dead")  # idempotent
    assert pings(sim, "h1", "10.233.0.12")
    assert "faults: none" in sim.status_lines()


def test_data_rate_slows_the_data_network_only(sim):
    with sim.fault("h2", "data-rate", value=f"{RATE_MBIT}mbit"):
        shown = subprocess.run(["tc", "-n", sim.settings.switch_ns, "qdisc", "show", "dev",
                                "data-h2"], capture_output=True, text=True).stdout
        assert f"rate {RATE_MBIT}Mbit" in shown
        assert f"rate {RATE_MBIT}Mbit" in sim.exec("h2", "tc", "qdisc", "show", "dev",
                                                   "eth2").stdout
        slow = {pair: transfer_s(sim, *pair, "10.233.0.12" if pair[1] == "h2" else "10.233.0.11",
                                 NBYTES) for pair in (("h1", "h2"), ("h2", "h1"))}
        fast = transfer_s(sim, "h1", "h2", "10.231.0.12", NBYTES)  # eth0 keeps its speed
    print(f"3 MB with h2's data link at {RATE_MBIT}mbit: {slow} s; over eth0 {fast:.3f} s")
    least = NBYTES * 8 / (RATE_MBIT * 1.3e6)  # 0.92 s
    assert all(seconds > least for seconds in slow.values()), slow
    assert fast < least / 4, fast
    assert "qdisc tbf" not in sim.exec("h2", "tc", "qdisc", "show", "dev", "eth2").stdout


def test_data_faults_refuse_a_host_without_eth2(sim):
    env = {"PATH": "/usr/bin:/bin", "HVSIM_PREFIX": PREFIX, "HVSIM_DIR": str(sim.state_dir)}
    for kind in ("data-dead", "data-rate"):
        proc = cli("fault", "h3", kind, "on", env=env)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "h3 has no data network interface eth2" in proc.stderr
    assert "faults: none" in sim.status_lines()


def test_up_again_with_the_same_data_net_is_idempotent(sim):
    pids = {h: (sim.state_dir / h / "sshd.pid").read_text() for h in sim.hosts}
    state = sim.up(UpOptions.parse("3", data_net="h2,h1"))
    assert state.options.data_net == ("h1", "h2")
    assert {h: (sim.state_dir / h / "sshd.pid").read_text() for h in sim.hosts} == pids
