"""The elastic discovery (preflight.discover) against a stand-in preflight: host:slots lines of
the healthy hosts and nothing else on stdout, a cached answer for DISCOVER_EVERY seconds, the
last answer kept when a round fails, bad input failing at once, and a dropped host named once."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preflight import discover
from preflight.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

FAKE = """
import json, os, sys, time
argv = sys.argv[1:]
with open(os.environ["FAKE_ARGV"], "w") as fh:
    json.dump(argv, fh)
time.sleep(float(os.environ.get("FAKE_SLEEP", "0")))
sys.stderr.write(os.environ.get("FAKE_SAYS", ""))
if "FAKE_HOSTFILE" in os.environ:
    with open(argv[argv.index("--hostfile") + 1], "w") as fh:
        fh.write(os.environ["FAKE_HOSTFILE"])
if "FAKE_REPORT" in os.environ:
    with open(argv[argv.index("--report") + 1], "w") as fh:
        fh.write(os.environ["FAKE_REPORT"])
sys.exit(int(os.environ.get("FAKE_RC", "0")))
"""

H3_OUT = {"hosts": [
    {"host": "h1", "ok": True, "checks": [{"id": "ssh.login", "status": "pass", "detail": ""}]},
    {"host": "h3", "ok": False, "checks": [
        {"id": "ssh.login", "status": "pass", "detail": "ok"},
        {"id": "resolve.loopback", "status": "fail", "detail": "h3 resolves to 127.0.1.1"},
        {"id": "mesh.tcp", "status": "fail", "detail": "no route"}]}]}


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_preflight.py"
    script.write_text(FAKE)
    return [sys.executable, str(script)]


def answer(fake: list[str], tmp_path: Path, **env: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = discover.discover({"PATH": os.environ["PATH"], "FAKE_ARGV": str(tmp_path / "argv"),
                            **env}, fake, out, err)
    return rc, out.getvalue(), err.getvalue()


def aged(path: Path, seconds: float) -> None:
    os.utime(path, (time.time() - seconds, time.time() - seconds))


def test_healthy_hosts_become_host_slots_lines_from_the_hostfile(fake, tmp_path: Path) -> None:
    rc, out, err = answer(fake, tmp_path, FAKE_RC="1", FAKE_HOSTFILE="h1 slots=2\nh2\n",
                          FAKE_REPORT=json.dumps(H3_OUT), DISCOVER_HOSTS="h1:2,h2,h3")
    assert (rc, out, err) == (0, "h1:2\nh2:1\n", "")
    argv = json.loads((tmp_path / "argv").read_text())
    assert argv[:8] == ["--hosts", "h1:2,h2,h3", "--no-mpi", "--elastic", "--quiet",
                        "--timeout", "5", "--hostfile"]
    assert argv[9] == "--report"


def test_the_inventory_file_and_the_timeout_reach_the_preflight(fake, tmp_path: Path) -> None:
    rc, out, _ = answer(fake, tmp_path, FAKE_REPORT="{}", DISCOVER_INVENTORY="/x/hosts",
                        DISCOVER_HOSTS="ignored", DISCOVER_TIMEOUT="2")
    assert (rc, out) == (0, "")  # no hostfile: no host is healthy, an empty answer
    argv = json.loads((tmp_path / "argv").read_text())
    assert argv[:7] == ["--inventory", "/x/hosts", "--no-mpi", "--elastic", "--quiet",
                        "--timeout", "2"]


def test_a_fresh_answer_is_given_again_without_a_round(fake, tmp_path: Path) -> None:
    state = tmp_path / "discovered"
    state.write_text("hX:9\n")
    env = {"DISCOVER_STATE": str(state), "DISCOVER_EVERY": "60",
           "FAKE_HOSTFILE": "h1 slots=1\n", "FAKE_REPORT": "{}"}
    assert answer(fake, tmp_path, **env) == (0, "hX:9\n", "")
    assert not (tmp_path / "argv").exists()  # no preflight ran
    aged(state, 120)  # older than DISCOVER_EVERY: a new round, and its answer is kept
    assert answer(fake, tmp_path, **env)[:2] == (0, "h1:1\n")
    assert state.read_text() == "h1:1\n"
    assert time.time() - state.stat().st_mtime < 30


def test_a_failed_round_keeps_the_last_answer_instead_of_an_empty_one(fake,
                                                                      tmp_path: Path) -> None:
    # A crashing preflight: exit 1 (Python's code for an uncaught exception), no report.
    state = tmp_path / "discovered"
    state.write_text("h1:2\nh2:2\n")
    aged(state, 120)  # due for a new round
    env = {"DISCOVER_STATE": str(state), "FAKE_RC": "1", "FAKE_SAYS": "Traceback: boom\n"}
    rc, out, err = answer(fake, tmp_path, **env)
    assert (rc, out) == (0, "h1:2\nh2:2\n")
    assert "Traceback: boom" in err
    state.unlink()  # no earlier answer: the failure shows
    rc, out, err = answer(fake, tmp_path, **env)
    assert (rc, out) == (3, "")
    assert "Traceback: boom" in err
    rc, out, _ = answer(fake, tmp_path, FAKE_RC="3")  # the preflight's own crash code
    assert (rc, out) == (3, "")


def test_bad_input_fails_at_once_even_with_an_earlier_answer(fake, tmp_path: Path) -> None:
    state = tmp_path / "discovered"
    state.write_text("h1:2\n")
    aged(state, 120)
    rc, out, err = answer(fake, tmp_path, DISCOVER_STATE=str(state), FAKE_RC="2",
                          FAKE_SAYS="preflight: error: --hosts item 1: slots='lots'\n")
    assert (rc, out) == (2, "")
    assert "slots='lots'" in err


def test_a_round_that_hangs_counts_as_failed(fake, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(discover, "round_limit_s", lambda timeout: 1.0)
    state = tmp_path / "discovered"
    state.write_text("h1:2\n")
    aged(state, 120)
    start = time.monotonic()
    rc, out, err = answer(fake, tmp_path, DISCOVER_STATE=str(state), FAKE_SLEEP="60",
                          FAKE_HOSTFILE="h9 slots=1\n", FAKE_REPORT="{}")
    assert time.monotonic() - start < 20
    assert (rc, out) == (0, "h1:2\n")
    assert "the preflight took over 1 s" in err


def test_a_host_that_drops_out_is_named_once_with_its_first_failure(fake,
                                                                    tmp_path: Path) -> None:
    state = tmp_path / "discovered"
    env = {"DISCOVER_STATE": str(state), "DISCOVER_EVERY": "0", "FAKE_RC": "1",
           "FAKE_HOSTFILE": "h1 slots=1\n", "FAKE_REPORT": json.dumps(H3_OUT)}
    rc, out, err = answer(fake, tmp_path, **env)
    assert (rc, out) == (0, "h1:1\n")
    assert err == "discover_hosts: h3 is out: resolve.loopback: h3 resolves to 127.0.1.1\n"
    assert answer(fake, tmp_path, **env) == (0, "h1:1\n", "")  # the same list: said once


def test_a_bad_discover_every_is_bad_input(fake, tmp_path: Path) -> None:
    state = tmp_path / "discovered"
    state.write_text("h1:2\n")
    with pytest.raises(UserError, match="DISCOVER_EVERY=soon must be a number"):
        answer(fake, tmp_path, DISCOVER_STATE=str(state), DISCOVER_EVERY="soon")


def test_the_shim_horovodrun_runs_is_the_venvs_python_on_preflight_discover(
        tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text('#!/bin/sh\necho "$0 $*"\n')
    python.chmod(0o755)
    shim = ROOT / "scripts" / "discover_hosts.sh"
    for given in (str(venv), os.path.relpath(venv, ROOT)):  # make's VENV=.venv is relative
        proc = subprocess.run([str(shim)], cwd=tmp_path, env={**os.environ, "VENV": given},
                              capture_output=True, text=True, timeout=30)
        assert (proc.returncode, proc.stdout.split()) == (
            0, [str(python) if given.startswith("/") else f"{ROOT}/{given}/bin/python",
                "-m", "preflight.discover"])
