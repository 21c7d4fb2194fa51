"""`make train` on this machine: bad input stops early with one line and nothing written, and
the default run (and one on a single process) trains the example to the accuracy target."""

from __future__ import annotations

import json
import os
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


def csv_file(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(row) for row in [header, *rows]) + "\n")
    return path


def digits_csv(folder: Path, label: str = "3", label_name: str = "label",
               val: bool = True) -> Path:
    """Files of the template's record shape (64 features and a label) with the given label."""
    header = [f"f{i}" for i in range(64)] + [label_name]
    rows = [["0.5"] * 64 + [label]] * 4
    csv_file(folder / "train-0.csv", header, rows)
    if val:
        csv_file(folder / "val-0.csv", header, rows)
    return folder


EDITS = {  # file in template/ -> (text, replacement)
    "config typo": ("config.toml", "epochs = 15", "epoch = 15"),
    "config type": ("config.toml", "batch_size = 32", 'batch_size = "32"'),
    "best typo": ("model.py", 'BEST = ("val_accuracy", "max")', 'BEST = ("val_acuracy", "max")'),
    "best mode": ("model.py", 'BEST = ("val_accuracy", "max")',
                  'BEST = ("val_accuracy", "maximum")'),
    "build fails": ("model.py", "tf.keras.layers.Input(shape=data.INPUT_SHAPE)",
                    "tf.keras.layers.Input(shape=(9, 9, 1))"),
}


@pytest.mark.parametrize("mistake, said", [
    ("config typo", "config.toml: [train] has an unknown key 'epoch'; did you mean 'epochs'?"),
    ("config type", "batch_size = '32' is not a int; write it as one, e.g. batch_size = 2"),
    ("best typo", "BEST names 'val_acuracy', which the model does not report (did you mean "
                  "'val_accuracy'?)"),
    ("best mode", "BEST's mode 'maximum' is neither \"max\" nor \"min\"; write BEST = "
                  "(\"val_accuracy\", \"max\")"),
    ("build fails", "model.py does not run on data.py's examples (x [32, 8, 8, 1]"),
])
def test_a_mistake_in_the_template_is_one_line_before_launch(tmp_path: Path, mistake: str,
                                                             said: str) -> None:
    copy = project(tmp_path)
    name, old, new = EDITS[mistake]
    path = copy / "template" / name
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new))
    proc = train_in(copy, tmp_path)
    assert said in error_line(proc)
    assert_nothing_launched(tmp_path, proc)


def assert_nothing_launched(tmp_path: Path, proc: subprocess.CompletedProcess) -> None:
    assert not (tmp_path / "preflight.json").exists()  # no preflight ...
    assert "horovodrun" not in proc.stderr and not (tmp_path / "runs").exists()  # ... no job
    assert "usage:" not in proc.stderr + proc.stdout


@pytest.mark.parametrize("files, said", [
    ("empty", "holds no training files; give a folder"),
    ("no label", "train-0.csv has no column 'label' in its header"),
    ("string labels", "train-0.csv: column 'label' holds 'cat', not a float; for strings"),
    ("no val files", "has no validation files (names starting with val, or VAL_DATA=), so "
                     "BEST's val_accuracy is never reported"),
])
def test_data_that_cannot_train_is_one_line_naming_the_file_before_launch(
        tmp_path: Path, files: str, said: str) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    if files == "no label":
        digits_csv(folder, label_name="target")
    elif files == "string labels":
        digits_csv(folder, label="cat")
    elif files == "no val files":
        digits_csv(folder, val=False)
    proc = make_train(tmp_path, DATA=str(folder))
    assert said in error_line(proc)
    assert_nothing_launched(tmp_path, proc)


def test_resume_keeps_the_runs_data_and_says_so(tmp_path: Path) -> None:
    # A run that trained on files (here a set without labels, so the check stops before the
    # launch): RESUME= without DATA= reads them again, not the in-memory set.
    data = digits_csv(tmp_path / "data", label_name="target")
    run = tmp_path / "old-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"data": str(data), "val_data": ""}))
    proc = make_train(tmp_path, RESUME=str(run))
    assert f"{data}/train-0.csv has no column 'label'" in error_line(proc)
    assert_nothing_launched(tmp_path, proc)
    assert json.loads((run / "config.json").read_text())["data"] == str(data)  # untouched
