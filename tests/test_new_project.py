"""`make new-project`: a copy that stands on its own and passes its own `make test`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REGRESSION = Path(__file__).resolve().parent / "regression_example"


def new_project(dest: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "new-project", f"DEST={dest}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_new_project_names_nothing_of_this_repository_it_does_not_need(tmp_path: Path) -> None:
    dest = tmp_path / "my-project"
    proc = new_project(dest)
    assert proc.returncode == 0, proc.stderr
    files = subprocess.run(["git", "ls-files"], cwd=dest, capture_output=True, text=True,
                           check=True).stdout.split()
    assert {"Makefile", "README.md", "template/train.py", "scripts/setup.sh",
            "scripts/preflight/pipeline.py", "tests/cluster/conftest.py", ".ci/run"} <= set(files)
    assert not [f for f in files if f.startswith("bench/")
                or f in ("tests/test_new_project.py", "tests/test_bench.py")]
    assert (dest / "README.md").read_text().startswith("# my-project\n")
    # (new_project.sh itself names what it leaves out)
    text = "\n".join((dest / f).read_text(errors="replace") for f in files
                     if f != "scripts/new_project.sh")
    assert "horovod-preflight" not in text and "bench" not in text
    assert "make train" in (dest / "README.md").read_text()


def test_new_project_refuses_a_folder_that_is_not_empty(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    proc = new_project(tmp_path)
    assert proc.returncode != 0
    assert "exists and is not empty" in proc.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


@pytest.mark.slow
@pytest.mark.cluster
def test_a_new_project_turned_to_regression_passes_its_own_make_test_and_trains(
        tmp_path: Path) -> None:
    dest = tmp_path / "my-project"
    assert new_project(dest).returncode == 0
    # A user's project: a regression model and data set (scikit-learn's diabetes), by editing
    # model.py and data.py alone.
    for name in ("model.py", "data.py"):
        shutil.copy(REGRESSION / name, dest / "template" / name)
    # Its own venv and its own simulated cluster (another prefix than this suite's); the training
    # runs that this suite already covers are deselected there to keep CI inside its time.
    env = {**os.environ, "HVSIM_PREFIX": "hvnp", "PYTEST_ARGS": "-q -m 'not slow'"}
    # Nothing of this repository's make: its VENV=, TF=... would reach the new project's make
    # through MAKEFLAGS even without the variable itself.
    for name in ("VENV", "TF", "PYTHON", "MAKEFLAGS", "MFLAGS", "MAKEOVERRIDES", "MAKELEVEL"):
        env.pop(name, None)
    proc = subprocess.run(["make", "--no-print-directory", "test"], cwd=dest, env=env,
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary
    assert (dest / ".venv" / "bin" / "horovodrun").exists()

    train = subprocess.run(["make", "--no-print-directory", "train", "NP=2", "EPOCHS=20",
                            "LR=0.005"], cwd=dest, env=env, capture_output=True, text=True,
                           timeout=600)
    assert train.returncode == 0, train.stdout[-3000:] + train.stderr[-2000:]
    (run,) = (dest / "runs").iterdir()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["best"]["metric"] == "val_mae" and "val_accuracy" not in metrics
    # The target is standardised: predicting its mean gives an MSE of about 1.
    assert metrics["val_loss"] < 0.8
    assert (run / "checkpoints" / "best.keras").is_file()
    assert "val_mae" in train.stdout.splitlines()[-1]
