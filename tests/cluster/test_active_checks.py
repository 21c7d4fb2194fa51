"""The active checks between hosts (mesh.tcp, mtu.path, mpi.*) on the simulated cluster.

Everything runs from h1 as the preflight would: the mesh agents over real ssh, mpirun over real
ssh with real Open MPI, and the faults are real iptables rules and MTUs. Needs root; see
conftest.py.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"
CIDR = "10.231.0.0/24"
MESH_TIMEOUT_S = 10
MPI_HANG_TIMEOUT_S = 15

# Runs on h1: one check family over the hosts given, printed as one JSON line.
DRIVER = """
import json, sys, time
spec = json.loads(sys.argv[1])
start = time.monotonic()
if spec["kind"] == "mesh":
    from preflight.active.mesh import run_mesh
    from preflight.checks.mesh import MeshHost
    from preflight.remote import Ssh
    with Ssh() as ssh:
        results = run_mesh(ssh, [MeshHost(**h) for h in spec["hosts"]],
                           timeout_s=spec["timeout_s"])
    measured = {}
else:
    from preflight.active.mpi import run_mpi
    from preflight.checks.mpi import MpiHost
    results, measured = run_mpi([MpiHost(**h) for h in spec["hosts"]], spec["interface"],
                                spec["cidr"], sys.executable, bandwidth=spec["bandwidth"],
                                timeout_s=spec["timeout_s"])
print(json.dumps({"seconds": time.monotonic() - start, "measured": measured,
                  "results": {h: [c.as_dict() for c in cs] for h, cs in results.items()}}))
"""


def python() -> str:
    return str(VENV_PY) if VENV_PY.exists() else sys.executable


def from_h1(cluster, spec: dict, timeout: float = 120) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "scripts")}
    proc = cluster.exec("h1", python(), "-c", DRIVER, json.dumps(spec), env=env, cwd=ROOT,
                        timeout=timeout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{spec['kind']} over {[h['name'] for h in spec['hosts']]}: {out['seconds']:.2f}s")
    return out


def mesh(cluster, hosts=None) -> dict:
    hosts = hosts or cluster.hosts
    return from_h1(cluster, {"kind": "mesh", "timeout_s": MESH_TIMEOUT_S, "hosts": [
        {"name": h, "address": cluster.addresses[h], "interface": cluster.interfaces[h],
         "mtu": 1500} for h in hosts]})


def mpi(cluster, hosts=None, bandwidth: bool = False, timeout_s: float = 60) -> dict:
    hosts = hosts or cluster.hosts
    return from_h1(cluster, {"kind": "mpi", "interface": "eth0", "cidr": CIDR,
                             "bandwidth": bandwidth, "timeout_s": timeout_s, "hosts": [
                                 {"name": h, "address": cluster.addresses[h], "slots": 1}
                                 for h in hosts]})


def status_of(out: dict, check_id: str) -> dict[str, str]:
    return {host: next(c["status"] for c in checks if c["id"] == check_id)
            for host, checks in out["results"].items()}


def check(out: dict, host: str, check_id: str) -> dict:
    return next(c for c in out["results"][host] if c["id"] == check_id)


# --- mesh.tcp and mtu.path ----------------------------------------------------------------------

def test_a_healthy_cluster_passes_mesh_and_mtu_on_every_host(cluster):
    out = mesh(cluster)
    assert status_of(out, "mesh.tcp") == {"h1": "pass", "h2": "pass", "h3": "pass"}, out
    assert status_of(out, "mtu.path") == {"h1": "pass", "h2": "pass", "h3": "pass"}, out
    assert "median round trip" in check(out, "h2", "mesh.tcp")["detail"]
    assert "1500-byte packets" in check(out, "h3", "mtu.path")["detail"]
    assert out["seconds"] < MESH_TIMEOUT_S


def test_a_firewall_on_h2_fails_mesh_tcp_on_h2_alone_with_a_remedy(cluster):
    cluster.fault("h2", "firewall", "on")
    try:
        out = mesh(cluster)
    finally:
        cluster.fault("h2", "firewall", "off")
    assert status_of(out, "mesh.tcp") == {"h1": "pass", "h2": "fail", "h3": "pass"}, out
    h2 = check(out, "h2", "mesh.tcp")
    assert "from h1, h3 while ssh works: a firewall drops ports above 1024" in h2["detail"]
    assert "open TCP ports 1024-65535" in h2["remedy"]
    assert "fix the firewall on h2" in h2["remedy"]
    # UDP is not dropped by this firewall: the MTU is still measured, and fine.
    assert status_of(out, "mtu.path") == {"h1": "pass", "h2": "pass", "h3": "pass"}, out
    assert out["seconds"] < MESH_TIMEOUT_S + 2


def test_mtu_1400_on_h3_fails_mtu_path_on_h3_alone(cluster):
    cluster.fault("h3", "mtu", "on", 1400)
    try:
        out = mesh(cluster)
    finally:
        cluster.fault("h3", "mtu", "off")
    assert status_of(out, "mtu.path") == {"h1": "pass", "h2": "pass", "h3": "fail"}, out
    h3 = check(out, "h3", "mtu.path")
    assert h3["detail"].startswith("packets larger than 1400 bytes never cross between h3 and "
                                   "h1, h2, every time (20 of 20 full-size datagrams lost")
    assert "eth0 MTU is 1400 on h3" in h3["detail"]
    assert h3["remedy"] == "set the same MTU on every host: ip link set eth0 mtu 1500 on h3"
    # TCP adapts its segment size, which is why a wrong MTU passes ssh and ping -c 1.
    assert status_of(out, "mesh.tcp") == {"h1": "pass", "h2": "pass", "h3": "pass"}, out


def test_a_host_whose_sshd_is_down_fails_mesh_tcp_quickly_and_alone(cluster):
    cluster.fault("h3", "sshd", "on")
    try:
        out = mesh(cluster)
    finally:
        cluster.fault("h3", "sshd", "off")
    assert status_of(out, "mesh.tcp") == {"h1": "pass", "h2": "pass", "h3": "fail"}, out
    assert "did not run on h3" in check(out, "h3", "mesh.tcp")["detail"]
    assert out["seconds"] < MESH_TIMEOUT_S + 2


# --- mpi ----------------------------------------------------------------------------------------

def test_mpirun_checks_an_allreduce_across_three_hosts_and_times_every_pair(cluster):
    out = mpi(cluster)
    assert status_of(out, "mpi.allreduce") == {"h1": "pass", "h2": "pass", "h3": "pass"}, out
    assert "allreduce over 3 ranks on h1, h2, h3 checked" in check(out, "h1",
                                                                    "mpi.allreduce")["detail"]
    latency = out["measured"]["latency_us"]
    assert {h: sorted(row) for h, row in latency.items()} == {
        "h1": ["h2", "h3"], "h2": ["h1", "h3"], "h3": ["h1", "h2"]}
    assert all(0 < us < 100_000 for row in latency.values() for us in row.values())


def test_the_bandwidth_matrix_has_every_pair_both_ways(cluster):
    out = mpi(cluster, bandwidth=True)
    assert status_of(out, "mpi.bandwidth") == {"h1": "pass", "h2": "pass", "h3": "pass"}, out
    rates = out["measured"]["bandwidth_MBps"]
    assert {h: sorted(row) for h, row in rates.items()} == {
        "h1": ["h2", "h3"], "h2": ["h1", "h3"], "h3": ["h1", "h2"]}
    assert all(mbps > 0 for row in rates.values() for mbps in row.values())


@pytest.mark.parametrize("host", ["h2", "h3"])
def test_a_firewall_makes_mpi_hang_and_only_that_host_is_named(cluster, host):
    cluster.fault(host, "firewall", "on")
    try:
        start = time.monotonic()
        hung = mpi(cluster, timeout_s=MPI_HANG_TIMEOUT_S)
        elapsed = time.monotonic() - start
        others = [h for h in cluster.hosts if h != host]
        without = mpi(cluster, hosts=others)
    finally:
        cluster.fault(host, "firewall", "off")
    # The job as a whole hangs; isolation names the host: it passes alone (its own ranks
    # meet on loopback) but fails with hosts that pass together. The others run again
    # without it and pass.
    statuses = status_of(hung, "mpi.allreduce")
    assert statuses[host] == "fail", hung
    failure = check(hung, host, "mpi.allreduce")
    assert "passed alone but failed together with" in failure["detail"], failure
    assert "1024" in failure["remedy"]
    assert {statuses[h] for h in others} == {"pass"}, hung
    assert check(hung, others[0], "mpi.allreduce")["detail"].endswith(
        f"checked without {host}, which failed")
    assert elapsed < 4 * MPI_HANG_TIMEOUT_S  # the group, alone, together, confirmed
    assert status_of(without, "mpi.allreduce") == {h: "pass" for h in others}, without


def test_a_host_whose_mpi_daemon_cannot_start_fails_alone_and_the_others_pass(cluster):
    """mpirun over all three fails as a group when orted cannot start on h2; isolation names h2
    (it fails alone with the launcher) and the others run again without it."""
    with cluster.fault("h2", "orted"):
        out = mpi(cluster, timeout_s=60)
    assert status_of(out, "mpi.allreduce") == {"h1": "pass", "h2": "fail", "h3": "pass"}, out
    h2 = check(out, "h2", "mpi.allreduce")
    assert h2["detail"].startswith("h2 failed alone with the launcher; the other 2 passed "
                                   "alone: mpirun exited with"), h2
    assert "orted" in h2["remedy"]
    assert "---" not in h2["detail"] and "workaround" not in h2["detail"]
    assert "checked without h2, which failed" in check(out, "h1", "mpi.allreduce")["detail"]
