"""Several faults at once, as on a real cluster: one bad host never takes the healthy ones down.

A cluster of its own (prefix hvmix, 10 hosts) where h2..h8 each carry a different fault of the
kinds people report in Horovod's, Open MPI's and NCCL's trackers. The preflight runs from h1
with every check (MPI included); every healthy host must stay in the hostfile and each faulty
host must fail (or warn) in the fitting family, with a remedy. Needs root; see conftest.py.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from conftest import skip_unless_cluster_possible

from simcluster import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
PREFIX = "hvmix"
HOSTS = [f"h{i}" for i in range(1, 11)]
# host -> (fault, value): one of each kind on a host of its own.
FAULTS = {
    "h2": ("orted", None),  # Open MPI's daemon does not start over non-interactive ssh
    "h3": ("no-resolve", "h1"),  # cannot resolve the launcher's name
    "h4": ("hostname", "h5"),  # reports h5's name as its own
    "h6": ("shadow", None),  # PYTHONPATH shadows Horovod with another version
    "h7": ("firewall", None),  # drops TCP above port 1024
    "h8": ("sshd", None),  # unreachable by ssh
    "h9": ("reverse-name", "h10"),  # its hostname resolves, on it, to h10's address
}
# host -> (check id, status) that each fault must produce there.
EXPECTED = {
    "h2": ("software.orted", "fail"),
    "h3": ("resolve.peers", "fail"),
    "h4": ("resolve.identity", "warn"),
    "h5": ("resolve.identity", "warn"),  # the other half of the twin names
    "h6": ("software.versions", "fail"),
    "h7": ("mesh.tcp", "fail"),
    "h8": ("ssh.login", "fail"),
    "h9": ("resolve.identity", "warn"),
}
HEALTHY = ["h1", "h4", "h5", "h9", "h10"]  # a warning keeps a host in


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster(PREFIX, tmp_path_factory.mktemp("hvmix") / "state")
    try:
        cluster.up(len(HOSTS))
        for host, (kind, value) in FAULTS.items():
            cluster.fault(host, kind, "on", value)
        yield cluster
    finally:
        cluster.down()


def run_preflight(cluster: Cluster, tmp_path: Path, *extra: str) -> tuple[int, dict, str]:
    hostfile, report = tmp_path / "hostfile", tmp_path / "preflight.json"
    started = time.monotonic()
    proc = cluster.exec("h1", "env", f"PYTHONPATH={ROOT / 'scripts'}", PY, "-m", "preflight",
                        "--hosts", ",".join(f"{h}:1" for h in HOSTS), "--hostfile",
                        str(hostfile), "--report", str(report), *extra, cwd=ROOT, timeout=300)
    print(f"preflight over {len(HOSTS)} hosts, {len(FAULTS)} faults: "
          f"{time.monotonic() - started:.1f} s\n{proc.stdout}{proc.stderr}")
    assert report.exists(), proc.stdout + proc.stderr
    return proc.returncode, json.loads(report.read_text()), (
        hostfile.read_text() if hostfile.exists() else "")


def by_id(doc: dict, host: str) -> dict[str, dict]:
    entry = next(h for h in doc["hosts"] if h["host"] == host)
    return {c["id"]: c for c in entry["checks"]}


def test_every_healthy_host_stays_and_each_fault_is_named_where_it_is(mixed, tmp_path):
    code, doc, hostfile = run_preflight(mixed, tmp_path)
    assert code == 1
    assert [line.split()[0] for line in hostfile.splitlines()] == HEALTHY, hostfile
    for host, (check_id, status) in EXPECTED.items():
        found = by_id(doc, host)[check_id]
        assert found["status"] == status, (host, found)
        assert found["remedy"], (host, found)
    for host in HEALTHY:
        fails = {i: c for i, c in by_id(doc, host).items() if c["status"] == "fail"}
        assert not fails, (host, fails)
    healthy_mpi = {h: by_id(doc, h)["mpi.allreduce"]["status"] for h in HEALTHY}
    assert set(healthy_mpi.values()) == {"pass"}, healthy_mpi
    # The launcher is not blamed for a name another host cannot resolve.
    assert by_id(doc, "h1")["resolve.name"]["status"] == "pass"
    assert "h3 cannot resolve it" in by_id(doc, "h1")["resolve.name"]["detail"]
    assert "PYTHONPATH" in by_id(doc, "h6")["software.versions"]["detail"]


def test_for_an_elastic_job_the_twin_hostnames_fail(mixed, tmp_path):
    code, doc, hostfile = run_preflight(mixed, tmp_path, "--no-mpi", "--elastic")
    assert by_id(doc, "h4")["resolve.identity"]["status"] == "fail"
    assert by_id(doc, "h5")["resolve.identity"]["status"] == "fail"
    assert "Gloo" in by_id(doc, "h4")["resolve.identity"]["detail"]
    assert {"h1", "h10"} <= {line.split()[0] for line in hostfile.splitlines()}
