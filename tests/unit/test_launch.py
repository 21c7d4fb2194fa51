"""What make train takes from a preflight report: the hostfile it vouches for, NP, interface."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from preflight import launch


def write_pair(tmp_path: Path, hostfile_text: str, interface: str = "eth0") -> tuple[Path, Path]:
    hostfile = tmp_path / "hostfile"
    hostfile.write_text(hostfile_text)
    report = tmp_path / "preflight.json"
    digest = hashlib.sha256(hostfile_text.encode()).hexdigest()
    report.write_text(json.dumps({"ok": True, "interface": interface,
                                  "interface_cidr": "10.0.0.0/24",
                                  "provenance": {"hostfile_sha256": digest}}))
    return hostfile, report


def test_settings_use_all_slots_and_the_chosen_interface(tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=2\nh2 slots=3\n")
    assert launch.main(["settings", "--report", str(report), "--hostfile", str(hostfile)]) == 0
    assert launch.settings(launch.load_report(report), hostfile, None) == (5, "eth0")


def test_names_that_differ_between_hosts_give_mpi_the_subnet_and_gloo_a_refusal(
        tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=1\nh2 slots=1\n", "eth0,ens5")
    loaded = launch.load_report(report)
    assert launch.settings(loaded, hostfile, None) == (2, "10.0.0.0/24")
    with pytest.raises(launch.LaunchError, match="Gloo takes one name for all"):
        launch.settings(loaded, hostfile, None, gloo=True)
    hostfile, report = write_pair(tmp_path, "h1 slots=1\n")
    assert launch.settings(launch.load_report(report), hostfile, None, gloo=True) == (1, "eth0")


def test_np_larger_than_the_slots_is_refused_with_the_fix(tmp_path: Path, capsys) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=2\n")
    rc = launch.main(["settings", "--report", str(report), "--hostfile", str(hostfile),
                      "--np", "3"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert "NP=3 is more than the 2 slots" in err and "lower NP" in err
    assert len(err.splitlines()) == 1


def test_a_hostfile_changed_after_the_preflight_is_not_vouched_for(tmp_path: Path) -> None:
    hostfile, report = write_pair(tmp_path, "h1 slots=2\n")
    assert launch.main(["vouches", "--report", str(report), "--hostfile", str(hostfile)]) == 0
    hostfile.write_text("h1 slots=2\nh9 slots=2\n")
    assert launch.main(["vouches", "--report", str(report), "--hostfile", str(hostfile)]) == 1
    with pytest.raises(launch.LaunchError, match="does not vouch"):
        launch.settings(launch.load_report(report), hostfile, None)


def test_missing_and_empty_hostfiles_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(launch.LaunchError, match="does not exist: run make preflight"):
        launch.hostfile_slots(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(launch.LaunchError, match="lists no hosts"):
        launch.hostfile_slots(empty)


def test_missing_report_says_run_the_preflight(tmp_path: Path) -> None:
    with pytest.raises(launch.LaunchError, match="run make preflight first"):
        launch.load_report(tmp_path / "preflight.json")
