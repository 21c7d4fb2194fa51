"""The preflight against the simulated cluster: real ssh, real /etc/hosts, real faults.

The cluster (conftest.py) has docker0 172.17.0.1/16 on every host, eth1 10.232.2.1/24 on h2 that
reaches nobody, and Debian's `127.0.1.1 h3` line on h3, so h3 always fails resolve.loopback here
and the faults go on h2. Needs root; see conftest.py.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = str(VENV_PY) if VENV_PY.exists() else sys.executable
HOSTS = "h1:2,h2:2,h3:2"


def preflight(cluster, tmp_path: Path, *extra: str, timeout_s: float = 120) -> tuple:
    """Runs the preflight on h1; returns (exit code, report, hostfile text or None, seconds)."""
    hostfile, report = tmp_path / "hostfile", tmp_path / "preflight.json"
    started = time.monotonic()
    proc = cluster.exec("h1", "env", f"PYTHONPATH={ROOT / 'scripts'}", PY, "-m", "preflight",
                        "--hosts", HOSTS, "--hostfile", str(hostfile), "--report", str(report),
                        "--no-mpi", *extra, timeout=timeout_s)
    elapsed = time.monotonic() - started
    assert report.exists(), proc.stdout + proc.stderr
    doc = json.loads(report.read_text())
    text = hostfile.read_text() if hostfile.exists() else None
    print(f"preflight on {HOSTS} took {elapsed:.2f} s\n{proc.stdout}{proc.stderr}")
    return proc.returncode, doc, text, elapsed


def checks(doc: dict, host: str) -> dict[str, dict]:
    entry = next(h for h in doc["hosts"] if h["host"] == host)
    return {c["id"]: c for c in entry["checks"]}


def failures(doc: dict, host: str) -> dict[str, dict]:
    return {i: c for i, c in checks(doc, host).items() if c["status"] == "fail"}


def test_preflight_chooses_eth0_and_leaves_out_the_debian_host(cluster, tmp_path):
    code, doc, hostfile, elapsed = preflight(cluster, tmp_path)
    assert code == 1
    assert (doc["interface"], doc["interface_cidr"]) == ("eth0", "10.231.0.0/24")
    assert [h["address"] for h in doc["hosts"]] == ["10.231.0.11", "10.231.0.12", "10.231.0.13"]
    over = " | ".join(doc["passed_over"])
    assert "docker0 172.17.0.1 on every host" in over
    assert "eth1 10.232.2.0/24 on h2 reaches no other host" in over
    assert "eth1 10.232.2.0/24" in checks(doc, "h2")["interface.choice"]["detail"]
    h3 = failures(doc, "h3")
    assert list(h3) == ["resolve.loopback"]
    assert "127.0.1.1" in h3["resolve.loopback"]["detail"]
    assert "/etc/hosts on h3" in h3["resolve.loopback"]["remedy"]
    assert failures(doc, "h1") == {} and failures(doc, "h2") == {}
    assert hostfile == "h1 slots=2\nh2 slots=2\n"
    assert doc["np"] == 4
    assert elapsed < 10


def test_sshd_stopped_on_h2_fails_only_its_ssh_login(cluster, tmp_path):
    cluster.fault("h2", "sshd", "on")
    try:
        code, doc, hostfile, _ = preflight(cluster, tmp_path)
    finally:
        cluster.fault("h2", "sshd", "off")
    assert code == 1
    h2 = failures(doc, "h2")
    assert list(h2) == ["ssh.login"]
    assert "sshd" in h2["ssh.login"]["detail"]
    assert h2["ssh.login"]["remedy"] == "start sshd on h2: sudo systemctl start ssh"
    assert checks(doc, "h2")["software.versions"]["status"] == "skip"
    assert failures(doc, "h1") == {}
    assert list(failures(doc, "h3")) == ["resolve.loopback"]
    assert hostfile == "h1 slots=2\n"


def test_link_down_on_h2_fails_its_ssh_login_in_bounded_time(cluster, tmp_path):
    cluster.fault("h2", "link", "on")
    try:
        code, doc, hostfile, elapsed = preflight(cluster, tmp_path, "--timeout", "5")
    finally:
        cluster.fault("h2", "link", "off")
    assert code == 1
    h2 = failures(doc, "h2")
    assert list(h2) == ["ssh.login"]
    assert h2["ssh.login"]["remedy"]
    assert any(w in h2["ssh.login"]["detail"] for w in ("no route", "timed out", "no answer"))
    assert failures(doc, "h1") == {}
    assert hostfile == "h1 slots=2\n"
    assert elapsed < 15


def test_deep_starts_horovod_itself_on_the_healthy_hosts(cluster, tmp_path):
    code, doc, hostfile, elapsed = preflight(cluster, tmp_path, "--deep", timeout_s=300)
    assert code == 1  # h3's Debian line, as always here
    for host in ("h1", "h2"):
        deep = checks(doc, host)["mpi.horovod"]
        assert deep["status"] == "pass", deep
        assert "over 2 host(s) (h1, h2)" in deep["detail"]
    assert checks(doc, "h3")["mpi.horovod"]["status"] == "skip"
    assert hostfile == "h1 slots=2\nh2 slots=2\n"
    print(f"--deep over 2 hosts: {elapsed:.1f} s")
