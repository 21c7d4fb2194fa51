"""`make train` on this machine: bad input stops early with one line and nothing written, and
the default run (and one on a single process) trains the example to the accuracy target."""

from __future__ import annotations

import json
import os
import re
import shutil
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


# --- the template's mistakes: one line on this host before the preflight, nothing launched --

def project(tmp_path: Path) -> Path:
    """A copy of this project's scripts and template (run with this venv), to edit."""
    copy = tmp_path / "project"
    for part in ("scripts", "template"):
        shutil.copytree(ROOT / part, copy / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return copy


def train_in(copy: Path, tmp_path: Path, **variables: str) -> subprocess.CompletedProcess:
    """make train's launcher in the copy, as its own make train would run it."""
    env = {**os.environ, "REPORT": str(tmp_path / "preflight.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           "VENV": str(ROOT / ".venv"), "PYTHONPATH": str(copy / "scripts"), **variables}
    return subprocess.run([str(ROOT / ".venv" / "bin" / "python"), "-m", "preflight.train"],
                          cwd=copy, env=env, capture_output=True, text=True, timeout=300)


def own_files(folder: Path, mistake: str = "") -> Path:
    """data.py's own set as CSV files (make data-files), so that any model.py takes them, with
    one mistake: the label column renamed, a string label, or no validation files."""
    written = subprocess.run([str(ROOT / ".venv" / "bin" / "python"),
                              str(ROOT / "template" / "records.py"), str(folder), "--files", "1",
                              "--val-files", "1"], capture_output=True, text=True, timeout=300)
    assert written.returncode == 0, written.stderr[-2000:]
    (train,) = folder.glob("train-*.csv")
    header, first, rest = train.read_text().split("\n", 2)
    if mistake == "no label":
        header = header.replace(",label", ",target")
    elif mistake == "string labels":
        first = first.rsplit(",", 1)[0] + ",cat"
    elif mistake == "late string label":  # past the first record, which the check reads
        rest = rest.rstrip("\n").rsplit(",", 1)[0] + ",cat\n"
    elif mistake == "no val files":
        for val in folder.glob("val-*"):
            val.unlink()
    train.write_text("\n".join((header, first, rest)))
    return folder


# Mistakes in model.py, appended to it so that they apply to any model.py.
BROKEN = "\nimport tensorflow as tf\n\n\ndef build(sample=None):\n    return " \
    "tf.keras.Sequential([tf.keras.layers.Input(shape=(1, 2, 3)), tf.keras.layers.Dense(1)])\n"
EDITS = {  # file in template/ -> (pattern, replacement), or text appended
    "config typo": ("config.toml", r"(?m)^epochs =", "epoch ="),
    "config type": ("config.toml", r"(?m)^batch_size = (\d+)", r'batch_size = "\1"'),
    "best typo": ("model.py", "", '\nBEST = (BEST[0] + "x", BEST[1])\n'),
    "best mode": ("model.py", "", '\nBEST = (BEST[0], "maximum")\n'),
    "build fails": ("model.py", "", BROKEN),
}


@pytest.mark.parametrize("mistake, said", [
    ("config typo", "config.toml: [train] has an unknown key 'epoch'; did you mean 'epochs'?"),
    ("config type", "batch_size = '32' is not a whole number; write it as one, e.g. "
                    "batch_size = 2"),
    ("best typo", "x', which the model does not report (did you mean 'val_"),
    ("best mode", "BEST's mode 'maximum' is neither \"max\" nor \"min\"; write BEST = "),
    ("build fails", "model.py does not run on data.py's examples (x [32, "),
])
def test_a_mistake_in_the_template_is_one_line_before_launch(tmp_path: Path, mistake: str,
                                                             said: str) -> None:
    copy = project(tmp_path)
    name, pattern, new = EDITS[mistake]
    path = copy / "template" / name
    text = path.read_text()
    edited = re.sub(pattern, new, text, count=1) if pattern else text + new
    assert edited != text
    path.write_text(edited)
    proc = train_in(copy, tmp_path)
    assert said in error_line(proc)
    assert_nothing_launched(tmp_path, proc)


def assert_nothing_launched(tmp_path: Path, proc: subprocess.CompletedProcess) -> None:
    assert not (tmp_path / "preflight.json").exists()  # no preflight ...
    assert "horovodrun" not in proc.stderr and not (tmp_path / "runs").exists()  # ... no job
    assert "usage:" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("mistake, said", [
    ("empty", "holds no training files; give a folder"),
    ("no label", ".csv has no column 'label' in its header"),
    ("string labels", ".csv: column 'label' holds 'cat', not a float; for strings"),
    ("no val files", "has no validation files (names starting with val, or VAL_DATA=), so "
                     "BEST's val_"),
])
def test_data_that_cannot_train_is_one_line_naming_the_file_before_launch(
        tmp_path: Path, mistake: str, said: str) -> None:
    folder = tmp_path / "data"
    if mistake == "empty":
        folder.mkdir()
    else:
        own_files(folder, mistake)
    proc = make_train(tmp_path, DATA=str(folder))
    line = error_line(proc)
    assert said in line
    assert mistake in ("empty", "no val files") or str(folder / "train-") in line  # the file
    assert_nothing_launched(tmp_path, proc)


def test_resume_keeps_the_runs_data_and_says_so(tmp_path: Path) -> None:
    # A run that trained on files (here a set without labels, so the check stops before the
    # launch): RESUME= without DATA= reads them again, not the in-memory set.
    data = own_files(tmp_path / "data", "no label")
    run = tmp_path / "old-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": str(data), "val_data": ""}))
    proc = make_train(tmp_path, RESUME=str(run))
    assert f"{data}/train-" in error_line(proc) and "has no column 'label'" in error_line(proc)
    assert_nothing_launched(tmp_path, proc)
    assert json.loads((run / "config.json").read_text())["data"] == str(data)  # untouched


@pytest.mark.slow
def test_a_bad_record_found_inside_the_ranks_is_one_line_at_the_end(tmp_path: Path) -> None:
    data = own_files(tmp_path / "data", "late string label")
    proc = make_train(tmp_path, DATA=str(data), NP="2", EPOCHS="2")
    assert proc.returncode != 0
    said = [ln for ln in proc.stderr.splitlines() if ln.startswith("make train:")]
    assert said[-1].startswith(f"make train: error: a record in {data}/train-"), said
    assert "column 'label' holds 'cat', not a float; for strings" in said[-1]
    shown = proc.stdout + proc.stderr
    assert shown.count("holds 'cat'") == 1  # once, not once per rank
    for noise in ("Traceback", "Primary job", "mpirun detected", "usage:"):
        assert noise not in shown, shown[-3000:]
