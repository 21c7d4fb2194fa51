"""The outputs: hostfile (healthy hosts only, nothing else), preflight.json, the table."""

from __future__ import annotations

import hashlib
import json

from rich.console import Console

from preflight import report
from preflight.checks.interface import InterfaceChoice
from preflight.launch.command import settings
from preflight.pipeline import Outcome
from preflight.result import HostReport, Report, failed, passed, skipped, warned

CHOICE = InterfaceChoice("10.231.0.0/24", {"h1": "eth0", "h2": "eth0", "h3": "eth0"},
                         {"h1": "10.231.0.11", "h2": "10.231.0.12", "h3": "10.231.0.13"},
                         {"h1": 1500, "h2": 1500, "h3": 1500}, reach=3, of=3,
                         passed_over=(("docker0 172.17.0.1 on every host",
                                       frozenset({"h1", "h2", "h3"})),))


def host(name: str, *checks, slots: int = 2) -> HostReport:
    return HostReport(name, CHOICE.addresses[name], slots,
                      (passed("ssh.login", "ok"), *checks), "eth0")


def outcome(*hosts: HostReport, matrices: dict | None = None) -> Outcome:
    rep = Report(tuple(hosts), "eth0", "10.231.0.0/24")
    ids = tuple(dict.fromkeys(c.id for h in hosts for c in h.checks))
    return Outcome(rep, CHOICE, matrices or {}, (), ids)


LOOPBACK_FAIL = failed("resolve.loopback", "h3 resolves to 127.0.1.1 on h3",
                       "remove the '127.0.1.1 h3' line from /etc/hosts on h3")
SOME_OUT = outcome(host("h1"), host("h2", warned("clock.skew", "+2 s", "enable time sync")),
                   host("h3", LOOPBACK_FAIL), matrices={"latency_us": [[0, 1], [1, 0]]})


def write(tmp_path, result: Outcome = SOME_OUT):
    hostfile, rep = tmp_path / "hostfile", tmp_path / "preflight.json"
    final, note = report.write_outputs(result, hostfile, rep, "--hosts")
    return final, note, hostfile, rep


def test_hostfile_lists_only_healthy_hosts_without_comments_or_blank_lines(tmp_path):
    _, _, hostfile, _ = write(tmp_path)
    assert hostfile.read_text() == "h1 slots=2\nh2 slots=2\n"


def test_report_json_has_the_documented_shape(tmp_path):
    _, _, hostfile, rep = write(tmp_path)
    doc = json.loads(rep.read_text())
    assert set(doc) >= {"ok", "interface", "interface_cidr", "np", "hosts", "matrices",
                        "provenance"}
    assert (doc["ok"], doc["interface"], doc["interface_cidr"], doc["np"]) == (
        False, "eth0", "10.231.0.0/24", 4)
    h3 = doc["hosts"][2]
    assert set(h3) == {"host", "address", "slots", "ok", "interface", "checks"}
    assert (h3["host"], h3["address"], h3["ok"], h3["interface"]) == (
        "h3", "10.231.0.13", False, "eth0")
    assert set(h3["checks"][1]) == {"id", "status", "detail", "remedy"}
    assert doc["matrices"] == {"latency_us": [[0, 1], [1, 0]]}
    prov = doc["provenance"]
    assert set(prov) == {"created", "inventory", "checks", "hostfile", "hostfile_sha256",
                         "preflight_version"}
    assert prov["hostfile_sha256"] == hashlib.sha256(hostfile.read_bytes()).hexdigest()
    assert prov["inventory"] == "--hosts"
    assert "resolve.loopback" in prov["checks"]


def test_make_train_accepts_the_hostfile_the_report_vouches_for(tmp_path):
    _, _, hostfile, rep = write(tmp_path)
    assert report.vouches(report.read_report(rep), hostfile)
    assert settings(report.read_report(rep), hostfile, None) == (4, "eth0")


def test_no_healthy_host_writes_no_hostfile_and_removes_a_stale_one(tmp_path):
    (tmp_path / "hostfile").write_text("old slots=9\n")
    nobody = outcome(host("h3", LOOPBACK_FAIL))
    final, note, hostfile, rep = write(tmp_path, nobody)
    assert not hostfile.exists()
    assert note.startswith("no healthy host: no hostfile written")
    doc = json.loads(rep.read_text())
    assert doc["provenance"]["hostfile"] is None
    assert doc["np"] == 0


def test_writes_leave_no_temporary_files_behind(tmp_path):
    write(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hostfile", "preflight.json"]


def render(result: Outcome, note: str = "hostfile", quiet: bool = False) -> str:
    console = Console(width=160, record=True, force_terminal=False)
    report.render(result, note, console, quiet)
    return console.export_text()


def test_table_has_a_row_per_host_and_a_column_per_family():
    text = render(SOME_OUT)
    header = next(line for line in text.splitlines() if " host " in line)
    for family in report.FAMILIES:
        assert family in header
    assert any(line.strip().startswith("h3") and "✗" in line for line in text.splitlines())


def test_failures_and_warnings_are_listed_with_their_remedies_failures_first():
    text = render(SOME_OUT)
    assert text.index("FAIL h3 resolve.loopback") < text.index("WARN h2 clock.skew")
    assert "fix: remove the '127.0.1.1 h3' line from /etc/hosts on h3" in text
    assert "passed over: docker0 172.17.0.1 on every host" in text


def test_summary_line_names_interface_np_and_hostfile():
    text = render(SOME_OUT, note="out/hostfile")
    assert "2 of 3 hosts healthy; interface eth0 (10.231.0.0/24); np 4; hostfile: out/hostfile" \
        in text


def test_quiet_prints_only_the_summary_line():
    assert render(SOME_OUT, quiet=True).strip().splitlines() == [
        "2 of 3 hosts healthy; interface eth0 (10.231.0.0/24); np 4; hostfile: hostfile"]


def test_skipped_family_shows_a_dash():
    h = host("h1", skipped("mpi.allreduce", "--no-mpi"))
    assert report.mark(h, "mpi").plain == "–"
    assert report.mark(h, "ssh").plain == "✓"
    assert report.mark(h, "mesh").plain == "–"
