"""The --bandwidth picture: latency and bandwidth heatmaps beside the report, the slow pairs
outlined; nothing drawn without --bandwidth, and never a failed preflight because of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from preflight import pictures, pipeline
from preflight.__main__ import main
from preflight.facts import Facts, HostProbe
from preflight.proc import Ran
from preflight.result import passed

FACTS = Path(__file__).with_name("facts")
PNG = b"\x89PNG\r\n\x1a\n"


def recorded() -> dict:
    """"matrices" of `preflight --hosts h1,h2,h3,h4 --bandwidth` on the simulated cluster with
    the pair h2-h4 alone throttled to 100 Mbit/s (an htb class for the other's address on each
    side): 12 MB/s both ways there, 1-2.5 GB/s elsewhere; latency is not affected by a rate."""
    return {
        "latency_us": {"h1": {"h2": 15.67, "h3": 20.09, "h4": 15.6},
                       "h2": {"h1": 15.67, "h3": 9.11, "h4": 15.7},
                       "h3": {"h1": 20.09, "h2": 9.11, "h4": 15.75},
                       "h4": {"h1": 15.6, "h2": 15.7, "h3": 15.75}},
        "bandwidth_MBps": {"h1": {"h2": 1342.0, "h3": 1055.8, "h4": 2460.0},
                           "h2": {"h1": 1084.6, "h3": 2125.9, "h4": 12.0},
                           "h3": {"h1": 1086.6, "h2": 1095.1, "h4": 1080.6},
                           "h4": {"h1": 1286.8, "h2": 12.0, "h3": 1236.7}},
        "ranks": ["h1", "h2", "h3", "h4"], "allreduce": {"ok": True}, "message_mib": 8.0,
        "seconds": 9.52}


def test_the_slow_pair_is_the_one_marked():
    m = recorded()
    assert pictures.slow_cells(m["bandwidth_MBps"], high_is_slow=False) == {
        ("h2", "h4"), ("h4", "h2")}
    assert pictures.slow_cells(m["latency_us"], high_is_slow=True) == set()


def test_a_pair_with_a_slow_latency_is_marked_both_ways():
    m = recorded()
    m["latency_us"]["h1"]["h3"] = m["latency_us"]["h3"]["h1"] = 2020.0  # a 2 ms delay on it
    assert pictures.slow_cells(m["latency_us"], high_is_slow=True) == {("h1", "h3"), ("h3", "h1")}


def test_a_healthy_spread_marks_nothing():
    m = recorded()
    m["latency_us"]["h1"]["h3"] = m["latency_us"]["h3"]["h1"] = 60.0  # 4x the rest: noise
    m["bandwidth_MBps"]["h2"]["h4"] = m["bandwidth_MBps"]["h4"]["h2"] = 400.0
    assert pictures.slow_cells(m["latency_us"], True) == set()
    assert pictures.slow_cells(m["bandwidth_MBps"], False) == set()


def test_one_pair_alone_has_nothing_to_be_slow_against():
    assert pictures.slow_cells({"h1": {"h2": 5000.0}, "h2": {"h1": 5000.0}}, True) == set()


def test_hosts_follow_the_rank_order():
    m = recorded()
    m["ranks"] = ["h3", "h1", "h4", "h2"]
    assert pictures.hosts_of(m, [m["latency_us"]]) == ["h3", "h1", "h4", "h2"]


def test_the_picture_is_a_png_beside_the_report(tmp_path):
    said: list[str] = []
    path = pictures.write_picture(recorded(), tmp_path / "preflight.json", said.append)
    assert path == tmp_path / "preflight-network.png"
    assert path.read_bytes()[:8] == PNG
    assert said == []
    assert [p.name for p in tmp_path.iterdir()] == ["preflight-network.png"]  # no temp file


def test_without_matplotlib_one_line_says_so_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now fails
    said: list[str] = []
    assert pictures.write_picture(recorded(), tmp_path / "preflight.json", said.append) is None
    assert len(said) == 1 and "matplotlib" in said[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("matrices", [{}, {"latency_us": {}, "bandwidth_MBps": {}},
                                      {"latency_us": [[0, 1]]}])
def test_no_pair_measured_is_a_line_not_a_failure(tmp_path, matrices):
    said: list[str] = []
    assert pictures.write_picture(matrices, tmp_path / "r.json", said.append) is None
    assert said == ["no network picture: no host pair was measured"]


# --- through the command line, on the recorded facts of three hosts -----------------------------

def replay(monkeypatch) -> dict:
    """The recorded facts as the probes' answers, every mesh test passing, and run_mpi
    answering with recorded matrices; returns what run_mpi was asked."""
    asked: dict = {}

    def probe_host(ssh, host, argv, source, timeout_s):
        raw = json.loads((FACTS / f"{host}.json").read_text())
        raw["resolved"]["h3"] = {"addresses": ["10.231.0.13"], "error": None}
        facts = Facts.from_dict(raw)
        return HostProbe(host, host == "h1", Ran(("ssh", host), 0, json.dumps(raw), "", 0.05),
                         facts, None, facts.time - 0.05, facts.time + 0.05)

    def run_mesh(ssh, hosts, python_for=None, timeout_s=10, seed=0):
        return {h.name: [passed("mesh.tcp", "ok"), passed("mtu.path", "1500")] for h in hosts}

    def run_mpi(hosts, interface, cidr, python, bandwidth=False, timeout_s=60, ssh_args=(),
                alone_s=10.0, seed=0):
        asked["bandwidth"] = bandwidth
        matrices = recorded()
        if not bandwidth:
            matrices["bandwidth_MBps"] = {}
        return {h.name: [passed("mpi.allreduce", "ok")] for h in hosts}, matrices

    monkeypatch.setattr(pipeline, "probe_host", probe_host)
    monkeypatch.setattr(pipeline.mesh_runner, "run_mesh", run_mesh)
    monkeypatch.setattr(pipeline.mpi_runner, "run_mpi", run_mpi)
    return asked


def test_bandwidth_run_writes_the_picture_and_says_where(tmp_path, monkeypatch, capsys):
    asked = replay(monkeypatch)
    report = tmp_path / "report.json"
    main(["--hosts", "h1,h2,h3", "--bandwidth", "--hostfile", str(tmp_path / "hostfile"),
          "--report", str(report)])
    picture = tmp_path / "report-network.png"
    assert asked["bandwidth"] is True
    assert picture.read_bytes()[:8] == PNG
    out = capsys.readouterr().out
    assert [line for line in out.splitlines() if "picture" in line] == [
        f"network picture: {picture}"]


def test_without_bandwidth_no_picture_is_drawn(tmp_path, monkeypatch, capsys):
    asked = replay(monkeypatch)
    main(["--hosts", "h1,h2,h3", "--hostfile", str(tmp_path / "hostfile"),
          "--report", str(tmp_path / "report.json")])
    assert asked["bandwidth"] is False
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostfile", "report.json"]
    assert "picture" not in capsys.readouterr().out


def test_matplotlib_is_not_imported_unless_a_picture_is_drawn():
    scripts = Path(__file__).resolve().parents[2] / "scripts"
    code = "import sys, preflight.__main__; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(scripts)}, check=True).stdout
    assert out.strip() == "False"
