"""The rate fault: a host's link throttled both ways with tc's tbf, as a slow link to rehearse.

A cluster of its own (prefix hvrate, 3 hosts). With h2 at 50 Mbit/s, 8 MB sent over TCP from
h1 to h2 and from h2 to h1 arrive at about that rate, h1 <-> h3 stays fast, and after 'off'
h1 -> h2 is fast again. All traffic stays between the cluster's own namespaces. The first tests
need no root: the rate's checks, and the tc commands that put netem (delay) and tbf (rate) on
one device, which this kernel (no sch_netem) cannot show for real.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from conftest import cli, skip_unless_cluster_possible, transfer_s

from preflight.errors import Exit, UserError
from simcluster import Cluster, Host, Settings, State, UpOptions, faults

PREFIX = "hvrate"
RATE_MBIT = 50
NBYTES = 8 * 10**6
# Receives one connection on the host's cluster address; prints its port, then bytes and the
# seconds from the first byte to the end (connecting is not part of the transfer).


# --- without root --------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "used", "bits"), [
    ("50mbit", "50mbit", 50 * 10**6), ("2.5Gbit", "2.5gbit", 25 * 10**8),
    ("100000000", "100000000", 10**8), ("500kbit", "500kbit", 5 * 10**5),
    (None, "100mbit", 10**8)])
def test_rate_values(given, used, bits):
    assert faults.check_value("rate", "on", given) == used
    assert faults.rate_bits(used) == bits


@pytest.mark.parametrize(("given", "says"), [
    ("100mb", "not a number of bits per second"), ("100mbps", "not mbps"),
    ("fast", "e.g. 100mbit"), ("50kbit", "outside 100kbit to 100gbit"),
    ("200gbit", "outside 100kbit to 100gbit")])
def test_bad_rates_are_refused_with_the_fix(given, says):
    with pytest.raises(UserError) as caught:
        faults.check_value("rate", "on", given)
    assert caught.value.code == Exit.BAD_INPUT
    assert says in str(caught.value)


def test_bucket_and_queue_follow_the_rate():
    def sizes(rate: str, mtu: int = 1500) -> tuple[int, int]:
        args = faults.tbf_args(rate, mtu)
        return int(args[args.index("burst") + 1]), int(args[args.index("limit") + 1])

    assert sizes("1gbit") == (1_250_000, 1_250_000 + 2_500_000)  # 10 ms; + 20 ms of queue
    assert sizes("10gbit")[0] == 12_500_000
    assert sizes("1mbit") == (2 * 1514, 2 * 1514 + 10 * 1514)  # the frame floors
    assert sizes("1mbit", 9000) == (2 * 9014, 2 * 9014 + 10 * 9014)


class FakeTc:
    """Stands in for faults.run: records each command; netem is missing when told so."""

    def __init__(self, netem: bool = True) -> None:
        self.netem = netem
        self.calls: list[tuple[str, ...]] = []

    def __call__(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        self.calls.append(argv)
        if "netem" in argv and not self.netem:
            return subprocess.CompletedProcess(argv, 2, "", "Error: Specified qdisc kind is "
                                               "unknown.\n")
        out = "2: eth0@if3: <BROADCAST,UP> mtu 1500 qdisc tbf" if argv[0] == "ip" else ""
        return subprocess.CompletedProcess(argv, 0, out, "")

    def adds(self) -> list[str]:
        """The qdiscs added, as 'NAMESPACE DEVICE PARENT... KIND'."""
        return [" ".join((c[2], *c[6:c.index("handle")], c[c.index("handle") + 2]))
                for c in self.calls if c[0] == "tc" and c[4] == "add"]


def fake_cluster(on: dict[str, str]) -> tuple[Settings, State, Host]:
    settings = Settings.make("hvfake", "/tmp/hvfake")
    state = State.new(settings, UpOptions.parse("3"))
    state.faults.update(on)
    return settings, state, state.host("h2")


def test_rate_with_delay_is_tbf_under_netem(monkeypatch):
    tc = FakeTc()
    monkeypatch.setattr(faults, "run", tc)
    faults.apply(*fake_cluster({"h2 delay": "50"}), "rate", True, "50mbit")
    assert tc.adds() == ["hvfake-h2 eth0 root netem", "hvfake-h2 eth0 parent 1:1 tbf",
                         "hvfake-sw port-h2 root tbf"]
    tc.calls.clear()
    faults.apply(*fake_cluster({"h2 rate": "50mbit"}), "delay", True, "50")
    assert tc.adds() == ["hvfake-h2 eth0 root netem", "hvfake-h2 eth0 parent 1:1 tbf"]
    tc.calls.clear()  # rate off: the delay stays
    faults.apply(*fake_cluster({"h2 delay": "50", "h2 rate": "50mbit"}), "rate", False, "")
    assert tc.adds() == ["hvfake-h2 eth0 root netem"]
    tc.calls.clear()  # delay off: the rate stays
    faults.apply(*fake_cluster({"h2 delay": "50", "h2 rate": "50mbit"}), "delay", False, "")
    assert tc.adds() == ["hvfake-h2 eth0 root tbf"]


def test_without_netem_delay_fails_and_the_rate_stays(monkeypatch):
    tc = FakeTc(netem=False)
    monkeypatch.setattr(faults, "run", tc)
    with pytest.raises(UserError) as caught:
        faults.apply(*fake_cluster({"h2 rate": "50mbit"}), "delay", True, "50")
    assert caught.value.code == Exit.UNSUPPORTED
    # netem is tried and refused; then the tbf is back as the root
    assert tc.adds() == ["hvfake-h2 eth0 root netem", "hvfake-h2 eth0 root tbf"]


# --- on a cluster of its own ---------------------------------------------------------------

@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster(PREFIX, tmp_path_factory.mktemp("hvrate") / "state")
    try:
        cluster.up(3)
        yield cluster
    finally:
        cluster.down()


def mbit_per_s(cluster: Cluster, src: str, dst: str) -> float:
    """Sends NBYTES over TCP from src to dst's cluster address; the rate dst received them at."""
    return NBYTES * 8 / transfer_s(cluster, src, dst, cluster.addresses[dst], NBYTES) / 1e6


def qdiscs(cluster: Cluster) -> str:
    """The qdiscs on both ends of h2's link."""
    host = cluster.host("h2")
    return (subprocess.run(["tc", "-n", host.namespace, "qdisc", "show", "dev", host.ifname],
                           capture_output=True, text=True).stdout
            + subprocess.run(["tc", "-n", cluster.settings.switch_ns, "qdisc", "show", "dev",
                              "port-h2"], capture_output=True, text=True).stdout)


def test_a_throttled_host_gets_its_rate_both_ways_and_the_others_keep_theirs(sim):
    started = time.monotonic()
    with sim.fault("h2", "rate", value=f"{RATE_MBIT}mbit"):
        assert "fault: h2 rate on (50mbit)" in sim.status_lines()
        recorded = json.loads((sim.state_dir / "state.json").read_text())["faults"]
        assert recorded == [{"host": "h2", "kind": "rate", "value": "50mbit"}]
        assert qdiscs(sim).count("tbf 10: root refcnt 3 rate 50Mbit") == 2, qdiscs(sim)
        speeds = {(a, b): mbit_per_s(sim, a, b)
                  for a, b in (("h1", "h2"), ("h2", "h1"), ("h1", "h3"), ("h3", "h1"))}
    speeds["h1", "h2", "off"] = mbit_per_s(sim, "h1", "h2")
    print(f"Mbit/s with h2 at {RATE_MBIT}mbit: "
          + ", ".join(f"{'->'.join(k[:2])}{' (off)' * (len(k) > 2)} {v:.1f}"
                      for k, v in speeds.items())
          + f"; {time.monotonic() - started:.1f} s")
    for pair in (("h1", "h2"), ("h2", "h1")):
        assert 0.5 * RATE_MBIT <= speeds[pair] <= 1.3 * RATE_MBIT, (pair, speeds)
    for pair in (("h1", "h3"), ("h3", "h1"), ("h1", "h2", "off")):
        assert speeds[pair] > 4 * RATE_MBIT, (pair, speeds)
    assert "faults: none" in sim.status_lines()
    assert "tbf" not in qdiscs(sim)


def test_the_command_line_turns_it_on_and_off(sim):
    env = {"PATH": "/usr/bin:/bin", "HVSIM_PREFIX": PREFIX, "HVSIM_DIR": str(sim.state_dir)}
    bad = cli("fault", "h2", "rate", "on", "100mbps", env=env)
    assert bad.returncode == 2 and "not mbps" in bad.stderr
    on = cli("fault", "h2", "rate", "on", "100mbit", env=env)
    assert on.returncode == 0, on.stderr
    assert "fault: h2 rate on (100mbit)" in cli("status", env=env).stdout
    assert qdiscs(sim).count("rate 100Mbit") == 2
    off = cli("fault", "h2", "rate", "off", env=env)
    assert off.returncode == 0, off.stderr
    assert "faults: none" in cli("status", env=env).stdout
    assert "tbf" not in qdiscs(sim)
