"""`make train` on this machine: bad input stops early with one line and nothing written, and
the default run (and one on a single process) trains the example to the accuracy target."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]


def make_train(tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "REPORT": str(tmp_path / "preflight.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           **variables}
    return subprocess.run(["make", "--no-print-directory", "train"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one line of a refusal: exit 2, `make train: error: WHAT; FIX`."""
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("make train:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("make train: error: "), lines[0]
    assert "; " in lines[0] or "e.g." in lines[0], lines[0]  # the fix
    return lines[0]


def test_missing_hostfile_is_one_line_and_nothing_is_written(tmp_path: Path) -> None:
    proc = make_train(tmp_path, HOSTFILE=str(tmp_path / "nope"))
    assert proc.returncode != 0
    assert "does not exist" in error_line(proc)
    assert not (tmp_path / "runs").exists()


def test_empty_hostfile_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("# nothing here\n\n")
    proc = make_train(tmp_path, HOSTFILE=str(empty))
    assert proc.returncode != 0
    assert "no hosts in the inventory" in error_line(proc)
    assert not (tmp_path / "runs").exists()


def test_hostfile_with_bad_slots_is_one_line_naming_the_line_and_the_fix(tmp_path: Path) -> None:
    bad = tmp_path / "hosts"
    bad.write_text("# two hosts\nlocalhost slots=abc\n")
    proc = make_train(tmp_path, HOSTFILE=str(bad))
    line = error_line(proc)
    assert f"HOSTFILE={bad} line 2: slots='abc' for localhost" in line
    assert "e.g. 'localhost slots=2'" in line
    assert not (tmp_path / "preflight.json").exists()  # refused before any preflight
    assert not (tmp_path / "runs").exists()


def test_np_above_the_slots_is_refused(tmp_path: Path) -> None:
    proc = make_train(tmp_path, NP="99")
    assert proc.returncode != 0
    assert "NP=99 is more than the" in error_line(proc)
    assert not (tmp_path / "runs").exists()


def test_resume_of_a_folder_without_checkpoints_is_refused(tmp_path: Path) -> None:
    proc = make_train(tmp_path, RESUME=str(tmp_path))
    assert proc.returncode != 0
    assert "has no checkpoints/" in error_line(proc)


@pytest.mark.slow
def test_default_train_reaches_the_accuracy_target_on_all_physical_cores(tmp_path: Path) -> None:
    proc = make_train(tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "preflight.json").read_text())
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == report["np"] == psutil.cpu_count(logical=False)
    assert metrics["val_accuracy"] >= 0.95
    assert metrics["samples_per_second"] > 0
    assert (run / "model.keras").is_file()
    assert f"metrics {run / 'metrics.json'}" in proc.stdout


@pytest.mark.slow
def test_one_process_reaches_the_accuracy_target_too(tmp_path: Path) -> None:
    # The learning rate scales with the world size: one process trains at the base rate.
    proc = make_train(tmp_path, NP="1")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 1
    assert metrics["val_accuracy"] >= 0.95
