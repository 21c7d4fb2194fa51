"""Elastic mode (make train ELASTIC=1): the discovery (scripts/discover_hosts.sh, which runs
preflight.discover) lists the hosts that pass the preflight, and a training run that loses a host
mid-way goes on without it to the last epoch. tests/unit/test_discover.py has the discovery's
rounds against a stand-in preflight."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DISCOVER = ROOT / "scripts" / "discover_hosts.sh"
VENV_PY = ROOT / ".venv" / "bin" / "python"
TRAIN = (str(VENV_PY), "-m", "preflight.train")  # what make train runs
EPOCHS = 40
CHECKPOINT_RE = re.compile(r"epoch-(\d+)\.keras$")


def run_train(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPORT": str(tmp_path / "pf.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           **variables}
    return subprocess.run(TRAIN, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("make train:")]
    assert all(ln.startswith("make train: error: ") for ln in lines), lines
    return lines


def test_discovery_on_this_machine_prints_only_host_slots_lines() -> None:
    proc = subprocess.run([str(DISCOVER)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("DISCOVER_")})
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"localhost:[1-9]\d*\n", proc.stdout), proc.stdout


def test_discovery_with_bad_inventory_fails_with_nothing_on_stdout() -> None:
    proc = subprocess.run([str(DISCOVER)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "DISCOVER_HOSTS": "h1:lots"})
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "slots must be a whole number" in proc.stderr


def test_elastic_values_are_checked_before_any_preflight(tmp_path: Path) -> None:
    for variables, words in [({"ELASTIC": "yes"}, "ELASTIC=yes"),
                             ({"MIN_NP": "2"}, "add ELASTIC=1"),
                             ({"ELASTIC": "1", "MIN_NP": "0"}, "MIN_NP=0 must be")]:
        proc = run_train(tmp_path, **variables)
        assert proc.returncode == 2, proc.stderr
        (line,) = error_lines(proc)
        assert words in line
        assert not (tmp_path / "pf.json").exists()


def test_min_np_above_the_processes_found_is_one_line(tmp_path: Path) -> None:
    proc = run_train(tmp_path, ELASTIC="1", MIN_NP="999")
    assert proc.returncode == 2, proc.stderr
    (line,) = error_lines(proc)
    assert "MIN_NP=999 is more than the" in line
    assert not (tmp_path / "runs").exists()


def test_discovery_answers_from_its_last_round_for_a_few_seconds(tmp_path: Path) -> None:
    state = tmp_path / "discovered"
    state.write_text("hX:9\n")  # no such host: only the cached answer can name it
    env = {**os.environ, "DISCOVER_STATE": str(state), "DISCOVER_EVERY": "60"}
    env.pop("DISCOVER_HOSTS", None)
    env.pop("DISCOVER_INVENTORY", None)
    proc = subprocess.run([str(DISCOVER)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env)
    assert (proc.returncode, proc.stdout) == (0, "hX:9\n"), proc.stderr
    os.utime(state, (time.time() - 120, time.time() - 120))  # older than DISCOVER_EVERY
    proc = subprocess.run([str(DISCOVER)], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert re.fullmatch(r"localhost:[1-9]\d*\n", proc.stdout), proc.stdout
    assert state.read_text() == proc.stdout


@pytest.mark.cluster
def test_discovery_lists_the_healthy_hosts_with_their_slots(cluster) -> None:
    # The session cluster's h3 has Debian's '127.0.1.1 h3' line, which the preflight fails.
    proc = cluster.exec("h1", str(DISCOVER), env={**os.environ,
                                                  "DISCOVER_HOSTS": "h1:1,h2:2,h3:1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["h1:1", "h2:2"]


def newest_epoch(runs: Path) -> int:
    found = [int(m.group(1)) for p in runs.glob("*/checkpoints/epoch-*.keras")
             if (m := CHECKPOINT_RE.search(p.name))]
    return max(found, default=0)


def start_training(cluster, tmp_path: Path) -> tuple[subprocess.Popen, Path]:
    """make train's launcher on h1 in the background, its output in a file; its own process
    group, so a test that times out can stop all of it."""
    env = {**cluster.env, "HOSTS": "h1:1,h2:1,h3:1", "REPORT": str(tmp_path / "pf.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           "EPOCHS": str(EPOCHS), "ELASTIC": "1", "MIN_NP": "2",
           # A dead host holds the others up for the Gloo timeout and the ssh keepalives
           # (3 x 5 s); a world that cannot re-form fails after a minute, not ten.
           "HOROVOD_GLOO_TIMEOUT_SECONDS": "15", "HOROVOD_ELASTIC_TIMEOUT": "60"}
    log = tmp_path / "train.log"
    with log.open("w") as out:
        proc = subprocess.Popen([str(cluster.script), "exec", "h1", *TRAIN],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return proc, log


def wait_for_epoch(proc: subprocess.Popen, runs: Path, epoch: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while newest_epoch(runs) < epoch:
        assert proc.poll() is None, f"training ended (rc {proc.returncode}) before epoch {epoch}"
        assert time.monotonic() < deadline, f"no checkpoint of epoch {epoch} in {timeout_s} s"
        time.sleep(0.2)


@pytest.mark.cluster
@pytest.mark.slow
def test_training_goes_on_without_a_host_that_drops_out(cluster, tmp_path: Path) -> None:
    cluster.fault("h3", "debian-hosts", "off")  # all three hosts pass the preflight at first
    proc = None
    try:
        proc, log = start_training(cluster, tmp_path)
        wait_for_epoch(proc, tmp_path / "runs", 3, timeout_s=180)
        cluster.fault("h3", "link", "on")  # h3 stops answering mid-run
        rc = proc.wait(timeout=240)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        cluster.fault("h3", "link", "off", check=False)
        cluster.fault("h3", "debian-hosts", "on", check=False)
    output = log.read_text()
    assert rc == 0, output[-5000:]

    assert "hosts changed: now 2 processes on h1, h2" in output
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert sorted(metrics["rank_hosts"]) == ["h1", "h2"]
    assert metrics["epochs"] == EPOCHS
    assert metrics["val_accuracy"] >= 0.95
    assert (run / "checkpoints" / f"epoch-{EPOCHS:03d}.keras").is_file()
    assert (run / "model.keras").is_file()
