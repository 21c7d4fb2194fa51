"""Never condemn a healthy host: faults no earlier check was written for, at once, on a cluster
of its own (prefix hvnc), with a slow but healthy host; then load on the machine, then a dead
host and the time it may cost.

Each faulty host must fail in the family where its fault is, with a remedy that fits (random
loss is never told to change the MTU), and every healthy host must stay in the hostfile.
Needs root; see conftest.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import skip_unless_cluster_possible

from simcluster import Cluster

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
PY = str(ROOT / ".venv" / "bin" / "python")
PREFIX = "hvnc"
HOSTS = [f"h{i}" for i in range(1, 10)]
FAULTS = {
    "h2": ("orted", "hang"),  # Open MPI's daemon starts, then never reports back
    "h3": ("loss", "10"),  # a flaky cable: 10% of incoming packets lost at random
    "h4": ("mtu", "1400"),  # a deterministic limit: the odd MTU out
    "h5": ("tmpdir", None),  # no session directory for Open MPI there
    "h6": ("slow-login", "3"),  # every ssh session waits 3 s: slow, not faulty
}
EXPECTED = {
    "h2": ("mpi.allreduce", "fail"),
    "h3": ("loss.path", "fail"),
    "h4": ("mtu.path", "fail"),
    "h5": ("software.session_dir", "fail"),
}
HEALTHY = ["h1", "h6", "h7", "h8", "h9"]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    skip_unless_cluster_possible()
    cluster = Cluster(PREFIX, tmp_path_factory.mktemp("hvnc") / "state")
    try:
        cluster.up(len(HOSTS))
        for host, (kind, value) in FAULTS.items():
            cluster.fault(host, kind, "on", value)
        yield cluster
    finally:
        cluster.down()


def run_preflight(cluster: Cluster, tmp_path: Path, hosts: list[str], *extra: str
                  ) -> tuple[int, dict, list[str], float]:
    hostfile, report = tmp_path / "hostfile", tmp_path / "preflight.json"
    hostfile.unlink(missing_ok=True)
    started = time.monotonic()
    proc = cluster.exec("h1", "env", f"PYTHONPATH={ROOT / 'scripts'}", PY, "-m", "preflight",
                        "--hosts", ",".join(f"{h}:1" for h in hosts), "--hostfile",
                        str(hostfile), "--report", str(report), *extra, cwd=ROOT, timeout=600)
    elapsed = time.monotonic() - started
    print(f"preflight over {len(hosts)} hosts: {elapsed:.1f} s\n{proc.stdout}{proc.stderr}")
    assert report.exists(), proc.stdout + proc.stderr
    kept = hostfile.read_text().split("\n") if hostfile.exists() else []
    return proc.returncode, json.loads(report.read_text()), [
        line.split()[0] for line in kept if line.strip()], elapsed


def by_id(doc: dict, host: str) -> dict[str, dict]:
    entry = next(h for h in doc["hosts"] if h["host"] == host)
    return {c["id"]: c for c in entry["checks"]}


def failures(doc: dict, host: str) -> dict[str, dict]:
    return {i: c for i, c in by_id(doc, host).items() if c["status"] == "fail"}


def test_each_unnamed_fault_is_found_in_its_family_and_every_healthy_host_stays(mixed,
                                                                                tmp_path):
    code, doc, kept, elapsed = run_preflight(mixed, tmp_path, HOSTS)
    assert code == 1
    assert kept == HEALTHY, json.dumps({h: failures(doc, h) for h in HOSTS}, indent=1)
    for host, (check_id, status) in EXPECTED.items():
        found = by_id(doc, host)[check_id]
        assert found["status"] == status, (host, found)
        assert found["remedy"], (host, found)
    for host in HEALTHY:
        assert not failures(doc, host), (host, failures(doc, host))
    # The daemon that hangs is narrowed by isolation, not guessed: the launcher is not blamed.
    assert "failed alone with the launcher" in by_id(doc, "h2")["mpi.allreduce"]["detail"]
    assert by_id(doc, "h2")["software.orted"]["status"] == "pass"
    # Random loss is a diagnosis of its own, never advice to change the MTU.
    loss = by_id(doc, "h3")["loss.path"]
    assert "%" in loss["detail"] and "cable" in loss["remedy"]
    assert not [c for c in by_id(doc, "h3").values() if "mtu" in (c.get("remedy") or "")]
    assert by_id(doc, "h3")["mtu.path"]["status"] != "fail"
    # The deterministic limit is an MTU verdict, told in one sentence.
    assert by_id(doc, "h4")["mtu.path"]["detail"].startswith(
        "packets larger than 1400 bytes never cross between h4 and")
    assert "TMPDIR" in by_id(doc, "h5")["software.session_dir"]["detail"]
    for host in HEALTHY:
        assert by_id(doc, host)["mpi.allreduce"]["status"] in ("pass", "warn"), host


def burners(count: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def test_load_on_the_machine_is_not_a_fault(mixed, tmp_path):
    """Busy cores (three spinning processes per core) slow every host's answers: all stay."""
    load = burners(6)
    try:
        code, doc, kept, _ = run_preflight(mixed, tmp_path, HEALTHY, "--bandwidth")
    finally:
        for proc in load:
            proc.kill()
            proc.wait()
    assert kept == HEALTHY, json.dumps({h: failures(doc, h) for h in HEALTHY}, indent=1)
    assert code in (0, 1)  # warnings allowed, no failure
    assert not any(failures(doc, h) for h in HEALTHY)


def test_a_dead_host_costs_at_most_about_one_timeout_more(mixed, tmp_path):
    healthy = ["h1", "h7", "h8"]
    _, _, kept, base_s = run_preflight(mixed, tmp_path, healthy, "--timeout", "5")
    assert kept == healthy
    mixed.fault("h9", "link", "on")
    try:
        _, doc, kept, dead_s = run_preflight(mixed, tmp_path, [*healthy, "h9"],
                                             "--timeout", "5")
    finally:
        mixed.fault("h9", "link", "off")
    assert kept == healthy
    login = by_id(doc, "h9")["ssh.login"]
    assert login["status"] == "fail" and "tried again" in login["detail"], login
    print(f"healthy {base_s:.1f} s, with a dead host {dead_s:.1f} s")
    assert dead_s <= base_s + 5 + 2.5  # the timeout once more, and the straggler's grace
