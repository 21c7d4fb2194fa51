"""The command line: flags, exit codes (0 healthy, 1 some out, 2 bad input), files written.

Tests with --hosts localhost run the real probe on this machine; the three-host tests replay the
recorded facts in facts/ through the whole pipeline, with stand-ins for the active tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preflight import pipeline
from preflight.__main__ import main
from preflight.checks.mesh import MeshHost
from preflight.checks.mpi import MpiHost
from preflight.facts import Facts, HostProbe
from preflight.proc import Ran
from preflight.result import failed, passed

FACTS = Path(__file__).with_name("facts")
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def outputs(tmp_path: Path) -> list[str]:
    return ["--hostfile", str(tmp_path / "hostfile"), "--report", str(tmp_path / "report.json")]


def test_help_names_every_flag(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # as read, whatever the wrapping
    for flag in ("--hosts", "--inventory", "--hostfile", "--report", "--bandwidth", "--no-mpi",
                 "--neighbours", "--timeout", "--quiet", "--json", "--deep", "--elastic",
                 "--show"):
        assert flag in text
    assert "never sweeps a subnet" in text
    assert "costs a TensorFlow import on every host, about 7-9 s more for 1-2 hosts" in text


def test_python_dash_m_preflight_runs():
    proc = subprocess.run([sys.executable, "-m", "preflight", "--help"], capture_output=True,
                          text=True, env={"PYTHONPATH": str(SCRIPTS)}, timeout=30, check=False)
    assert proc.returncode == 0
    assert "Exit codes" in proc.stdout


def test_a_crash_exits_3_not_1_which_means_some_hosts_are_out(tmp_path, monkeypatch, capsys):
    def crash(*_args, **_kwargs):
        raise FileNotFoundError("a socket went away")

    monkeypatch.setattr(pipeline, "run", crash)
    rc = main(["--hostfile", str(tmp_path / "hf"), "--report", str(tmp_path / "r.json")])
    assert rc == 3
    err = capsys.readouterr().err
    assert "FileNotFoundError: a socket went away" in err
    assert "the preflight itself failed" in err


def test_hosts_and_inventory_together_are_bad_input(tmp_path):
    with pytest.raises(SystemExit) as done:
        main(["--hosts", "h1", "--inventory", "x", *outputs(tmp_path)])
    assert done.value.code == 2


def test_hostfile_that_is_the_inventory_itself_is_bad_input(tmp_path, capsys):
    inventory = tmp_path / "hosts"
    inventory.write_text("localhost slots=1\n")
    code = main(["--inventory", str(inventory), "--hostfile", str(inventory),
                 "--report", str(tmp_path / "r.json")])
    assert code == 2
    assert inventory.read_text() == "localhost slots=1\n"
    assert not (tmp_path / "r.json").exists()
    assert "is the inventory itself" in capsys.readouterr().err


def test_output_in_a_missing_folder_is_bad_input(tmp_path):
    code = main(["--hosts", "localhost", "--hostfile", str(tmp_path / "no" / "hostfile"),
                 "--report", str(tmp_path / "r.json")])
    assert code == 2
    assert list(tmp_path.iterdir()) == []


def test_shell_metacharacters_in_hosts_exit_2_and_write_nothing(tmp_path, capsys):
    assert main(["--hosts", "h1,$(touch pwned)", *outputs(tmp_path)]) == 2
    assert list(tmp_path.iterdir()) == []
    assert "--hosts item 2: bad host name" in capsys.readouterr().err


def test_same_host_by_name_and_address_exits_2(tmp_path, capsys):
    assert main(["--hosts", "localhost,127.0.0.1", *outputs(tmp_path)]) == 2
    assert "same host as localhost" in capsys.readouterr().err


def test_localhost_run_writes_a_report_that_matches_the_exit_code(tmp_path):
    code = main(["--hosts", "localhost:1", "--no-mpi", "--quiet", *outputs(tmp_path)])
    doc = json.loads((tmp_path / "report.json").read_text())
    assert code == (0 if doc["ok"] else 1)
    (only,) = doc["hosts"]
    assert (only["host"], only["slots"], doc["interface"]) == ("localhost", 1, "lo")
    ids = [c["id"] for c in only["checks"]]
    for check_id in ("ssh.login", "ssh.probe", "resolve.name", "resolve.loopback",
                     "interface.choice", "software.versions", "resources.paths", "clock.skew",
                     "mpi.allreduce"):
        assert check_id in ids
    hostfile = tmp_path / "hostfile"
    assert hostfile.exists() == only["ok"]
    if only["ok"]:
        assert hostfile.read_text() == "localhost slots=1\n"


def test_host_that_does_not_resolve_fails_and_the_run_exits_1_quickly(tmp_path):
    started = time.monotonic()
    code = main(["--hosts", "localhost,nosuchhost.invalid", "--no-mpi", "--quiet", "--timeout",
                 "5", *outputs(tmp_path)])
    assert time.monotonic() - started < 15
    assert code == 1
    doc = json.loads((tmp_path / "report.json").read_text())
    bad = doc["hosts"][1]
    status = {c["id"]: c["status"] for c in bad["checks"]}
    assert status["ssh.login"] == "fail"
    assert status["resolve.name"] == "fail"
    assert status["software.versions"] == "skip"


def test_json_flag_prints_the_report_on_stdout(tmp_path, capsys):
    main(["--hosts", "localhost", "--no-mpi", "--json", *outputs(tmp_path)])
    out = capsys.readouterr().out
    assert json.loads(out) == json.loads((tmp_path / "report.json").read_text())


# --- the whole pipeline on recorded facts -------------------------------------------------------

def replay(monkeypatch, edit=None, mesh_fails: tuple[str, ...] = ()) -> dict:
    """Replays facts/h1-3.json as the probes' answers; records what the active tests got."""
    calls: dict = {}

    def probe_host(ssh, host, argv, source, timeout_s):
        raw = json.loads((FACTS / f"{host}.json").read_text())
        if edit:
            edit(host, raw)
        facts = Facts.from_dict(raw)
        result = Ran(("ssh", host), 0, json.dumps(raw), "", 0.05)
        return HostProbe(host, host == "h1", result, facts, None, facts.time - 0.05,
                              facts.time + 0.05)

    def run_mesh(ssh, hosts, python_for=None, timeout_s=10, seed=0):
        calls["mesh"] = hosts
        return {h.name: [failed("mesh.tcp", "h1 cannot connect", "open the ports")
                         if h.name in mesh_fails else passed("mesh.tcp", "ok"),
                         passed("mtu.path", "1500")] for h in hosts}

    def run_mpi(hosts, interface, cidr, python, bandwidth=False, timeout_s=60, ssh_args=(),
                alone_s=10.0, seed=0):
        calls["mpi"] = (hosts, interface, cidr)
        return {h.name: [passed("mpi.allreduce", "ok")] for h in hosts}, {"latency_us": []}

    monkeypatch.setattr(pipeline, "probe_host", probe_host)
    monkeypatch.setattr(pipeline.mesh_runner, "run_mesh", run_mesh)
    monkeypatch.setattr(pipeline.mpi_runner, "run_mpi", run_mpi)
    return calls


def test_debian_host_is_left_out_of_the_hostfile_and_the_run_exits_1(tmp_path, monkeypatch):
    calls = replay(monkeypatch)
    code = main(["--hosts", "h1,h2,h3", "--quiet", *outputs(tmp_path)])
    assert code == 1
    assert (tmp_path / "hostfile").read_text() == "h1 slots=2\nh2 slots=2\n"
    doc = json.loads((tmp_path / "report.json").read_text())
    assert (doc["interface"], doc["interface_cidr"], doc["np"]) == ("eth0", "10.231.0.0/24", 4)
    h3 = {c["id"]: c for c in doc["hosts"][2]["checks"]}
    assert h3["resolve.loopback"]["status"] == "fail"
    assert h3["mesh.tcp"]["status"] == "skip"
    assert [h.name for h in calls["mesh"]] == ["h1", "h2"]
    assert calls["mesh"][1] == MeshHost("h2", "10.231.0.12", "eth0", 1500)
    hosts, interface, cidr = calls["mpi"]
    assert (hosts, interface, cidr) == (
        [MpiHost("h1", "10.231.0.11", 2), MpiHost("h2", "10.231.0.12", 2)], "eth0",
        "10.231.0.0/24")
    assert doc["matrices"] == {"latency_us": []}


def test_all_hosts_healthy_exits_0(tmp_path, monkeypatch):
    def no_debian_line(host, raw):
        raw["resolved"]["h3"] = {"addresses": ["10.231.0.13"], "error": None}
    replay(monkeypatch, no_debian_line)
    assert main(["--hosts", "h1,h2:1,h3", "--quiet", *outputs(tmp_path)]) == 0
    assert (tmp_path / "hostfile").read_text() == "h1 slots=2\nh2 slots=1\nh3 slots=2\n"


def test_host_failing_the_mesh_is_left_out_of_mpi(tmp_path, monkeypatch):
    calls = replay(monkeypatch, mesh_fails=("h2",))
    assert main(["--hosts", "h1,h2,h3", "--quiet", *outputs(tmp_path)]) == 1
    assert [h.name for h in calls["mpi"][0]] == ["h1"]
    assert (tmp_path / "hostfile").read_text() == "h1 slots=2\n"


def test_no_mpi_skips_the_mpi_test(tmp_path, monkeypatch):
    calls = replay(monkeypatch)
    main(["--hosts", "h1,h2", "--no-mpi", "--quiet", *outputs(tmp_path)])
    assert "mpi" not in calls
    doc = json.loads((tmp_path / "report.json").read_text())
    mpi = [c for c in doc["hosts"][0]["checks"] if c["id"] == "mpi.allreduce"]
    assert mpi == [{"id": "mpi.allreduce", "status": "skip", "detail": "skipped: --no-mpi",
                    "remedy": ""}]


def test_version_mismatch_on_one_host_leaves_only_that_host_out(tmp_path, monkeypatch):
    def old_horovod(host, raw):
        raw["resolved"]["h3"] = {"addresses": ["10.231.0.13"], "error": None}
        if host == "h2":
            raw["packages"]["horovod"] = "0.27.0"
    replay(monkeypatch, old_horovod)
    assert main(["--hosts", "h1,h2,h3", "--quiet", *outputs(tmp_path)]) == 1
    assert (tmp_path / "hostfile").read_text() == "h1 slots=2\nh3 slots=2\n"


def test_neighbours_lists_unknown_neighbour_entries_as_candidates(tmp_path, monkeypatch):
    def neighbours(host, raw):
        raw["neighbours"] = [
            {"address": "10.231.0.12", "dev": "eth0", "mac": "02:00:0a:e7:00:12",
             "state": ["REACHABLE"]},
            {"address": "10.231.0.14", "dev": "eth0", "mac": "02:00:0a:e7:00:14",
             "state": ["STALE"]},
            {"address": "10.231.0.15", "dev": "eth0", "mac": None, "state": ["FAILED"]}]
    replay(monkeypatch, neighbours)
    main(["--hosts", "h1,h2", "--neighbours", "--quiet", *outputs(tmp_path)])
    doc = json.loads((tmp_path / "report.json").read_text())
    assert doc["candidates"] == [{"address": "10.231.0.14", "mac": "02:00:0a:e7:00:14",
                                  "seen_from": ["h1 eth0", "h2 eth0"]}]


def test_probe_is_asked_for_neighbours_only_with_the_flag():
    plain = pipeline.probe_argv(["h1", "h2"], pipeline.Options())
    asked = pipeline.probe_argv(["h1", "h2"], pipeline.Options(neighbours=True))
    assert "--neighbours" not in plain and asked[-1] == "--neighbours"
    assert plain[:3] == ["sh", "-c", pipeline.REMOTE_SH]
    assert plain[plain.index("--resolve") + 1] == "h1"


def test_show_interfaces_lists_each_interface_with_its_class_and_marks_the_jobs(tmp_path, capsys):
    main(["--hosts", "localhost:1", "--no-mpi", "--show", "interfaces", *outputs(tmp_path)])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if " lo " in f" {line} "]
    assert rows and "*" in rows[0] and "127.0.0.1/8 (loopback)" in rows[0]
    assert "loopback" in rows[0].split()[-1]
    for column in ("interface", "addresses", "mac", "mtu", "speed", "kind"):
        assert column in out


def test_the_open_files_limit_is_raised_to_the_hard_limit_and_a_too_low_hard_limit_is_named():
    import resource

    from preflight import proc
    from preflight.errors import UserError

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
        assert proc.raise_open_files(3) == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == hard
        too_many = (hard - proc.FILES_MARGIN) // proc.FILES_PER_HOST + 1
        with pytest.raises(UserError, match=r"ulimit -n"):
            proc.raise_open_files(too_many)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
