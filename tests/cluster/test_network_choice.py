"""Hosts with two networks that reach every host (simcluster --data-net: eth2 on a switch of its
own, no names there): the preflight measures both and the job runs on the one that carries
more; a dead second NIC is passed over; --interface forces a choice, with a note.

A cluster of its own (prefix hvnet, 3 hosts), so the session cluster is never touched; all
traffic stays between its namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pytest
from conftest import skip_unless_cluster_possible

from simcluster import Cluster, UpOptions

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
PYTHON = ROOT / ".venv" / "bin" / "python"
HOSTS = ("h1", "h2", "h3")
SLOW_MBPS = 100 / 8  # eth0 at 100 Mbit/s: 12.5 MB/s at most


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster("hvnet", tmp_path_factory.mktemp("hvnet") / "state", log=lambda _: None)
    try:
        cluster.up(UpOptions.parse("3", data_net="all"))
        yield cluster
    finally:
        cluster.down()


@contextlib.contextmanager
def on_every_host(cluster: Cluster, kind: str, value: str | None = None):
    with contextlib.ExitStack() as stack:
        for host in HOSTS:
            stack.enter_context(cluster.fault(host, kind, value=value))
        yield


def preflight(cluster: Cluster, tmp_path: Path, *args: str) -> tuple[dict, str]:
    report = tmp_path / "pf.json"
    proc = cluster.exec("h1", str(PYTHON), "-m", "preflight", "--hosts", "h1:1,h2:1,h3:1",
                        "--report", str(report), "--hostfile", str(tmp_path / "hostfile"),
                        *args, cwd=str(ROOT), timeout=180)
    assert report.exists(), proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads(report.read_text()), proc.stdout


def tx_bytes(cluster: Cluster, host: str, interface: str) -> int:
    return int(cluster.exec(host, "cat", f"/sys/class/net/{interface}/statistics/tx_bytes")
               .stdout)


def test_the_job_runs_on_the_fast_network_not_the_one_where_names_resolve(sim, tmp_path):
    env = {**os.environ, "HOSTS": "h1:1,h2:1,h3:1", "REPORT": str(tmp_path / "pf.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           "EPOCHS": "2"}
    with on_every_host(sim, "rate", "100mbit"):
        before = {i: tx_bytes(sim, "h2", i) for i in ("eth0", "eth2")}
        proc = sim.exec("h1", str(PYTHON), "-m", "preflight.train", env=env, cwd=str(ROOT),
                        timeout=600)  # what make train runs: the preflight, then horovodrun
        sent = {i: tx_bytes(sim, "h2", i) - before[i] for i in ("eth0", "eth2")}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "pf.json").read_text())
    assert report["ok"] and report["interface"] == "eth2", report["passed_over"]
    assert report["interface_cidr"] == "10.233.0.0/24"
    rates = {n["interface"]: n for n in report["networks"]}
    assert rates["eth0"]["MBps"] < 1.1 * SLOW_MBPS, rates
    assert rates["eth2"]["MBps"] > 3 * rates["eth0"]["MBps"], rates
    assert rates["eth2"]["chosen"] and not rates["eth0"]["chosen"]
    (line,) = [p for p in report["passed_over"] if p.startswith("measured ")]
    assert line.endswith(": eth2 chosen") and "eth0 10.231.0.0/24: " in line, line
    assert "--network-interfaces eth2" in proc.stderr
    # h2's gradients left by eth2; eth0 carried the ssh sessions (rank output, the probe).
    assert sent["eth2"] > sent["eth0"], sent
    (run,) = (tmp_path / "runs").iterdir()
    assert json.loads((run / "metrics.json").read_text())["world_size"] == 3


def test_a_forced_slow_network_is_used_with_a_note_giving_both_rates(sim, tmp_path):
    with on_every_host(sim, "rate", "100mbit"):
        report, _ = preflight(sim, tmp_path, "--interface", "10.231.0.0/24")
    assert report["ok"] and report["interface"] == "eth0"
    (note,) = [p for p in report["passed_over"] if p.startswith("--interface")]
    assert "forced although another network is faster" in note
    assert "without --interface eth2 would be chosen" in note


def test_a_dead_second_nic_on_every_host_is_passed_over_and_no_host_blamed(sim, tmp_path):
    with on_every_host(sim, "data-dead"):
        report, out = preflight(sim, tmp_path)
    assert report["ok"], out[-3000:]
    assert report["interface"] == "eth0" and report["np"] == 3
    dead = next(n for n in report["networks"] if n["interface"] == "eth2")
    assert dead["MBps"] == 0 and all("error" in p for p in dead["pairs"])
    assert any("eth2 10.233.0.0/24: nothing crossed" in p for p in report["passed_over"])


def test_a_network_that_fails_most_hosts_in_the_mesh_falls_back_to_the_next(sim, tmp_path):
    """A fault nobody named, beyond the race's TCP burst: the data network drops every UDP
    datagram. eth2 wins the race (eth0 at 100 Mbit/s), the mesh fails most hosts on it and
    passes them all on eth0: eth0 is chosen and every host kept, the line saying why."""
    drop = ("INPUT", "-i", "eth2", "-p", "udp", "-j", "DROP")
    try:
        for host in HOSTS:
            sim.exec(host, "iptables", "-A", *drop, check=True)
        with on_every_host(sim, "rate", "100mbit"):
            report, out = preflight(sim, tmp_path)
    finally:
        for host in HOSTS:
            sim.exec(host, "iptables", "-D", *drop)
    assert report["ok"] and report["np"] == 3, out[-3000:]
    assert report["interface"] == "eth0"
    (line,) = [p for p in report["passed_over"] if p.startswith("measured ")]
    assert "but on eth2 10.233.0.0/24 the mesh failed" in line and line.endswith("eth0 chosen")
