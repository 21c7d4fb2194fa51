"""A rank that dies mid-run: make train exits non-zero naming the rank and host, the last
checkpoint is intact, and RESUME finishes the run on another process count."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import time
import zipfile
from pathlib import Path

import h5py
import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def train_env(tmp_path: Path, **variables: str) -> dict[str, str]:
    return {**os.environ, "REPORT": str(tmp_path / "preflight.json"),
            "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
            **variables}


def rank_pid(rank: int) -> int | None:
    """The pid of the training process of this rank, from the environment mpirun gave it."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"template/train.py" in cmdline and f"OMPI_COMM_WORLD_RANK={rank}".encode() in environ:
            return int(pid)
    return None


def wait_for_checkpoint(runs: Path, epoch: int, timeout_s: float = 300) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = sorted(runs.glob(f"*/checkpoints/epoch-{epoch:03d}.keras"))
        if found:
            return found[0].parents[1]
        time.sleep(0.2)
    raise AssertionError(f"no checkpoint of epoch {epoch} within {timeout_s}s")


def test_killed_rank_is_named_and_the_run_resumes_to_the_full_epoch_count(tmp_path: Path) -> None:
    job = subprocess.Popen(["make", "--no-print-directory", "train"], cwd=ROOT, text=True,
                           env=train_env(tmp_path, EPOCHS="400", NP="2"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run = wait_for_checkpoint(tmp_path / "runs", 3)
        pid = rank_pid(1)
        assert pid, "rank 1 not found"
        os.kill(pid, signal.SIGKILL)
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0
    named = f"make train: rank 1 on {socket.gethostname()} was killed by signal 9"
    assert named in err, err[-2000:]
    assert f"RESUME={run}" in err

    # The newest checkpoint opens (Keras' zip format) and holds weights and optimizer state.
    newest = sorted((run / "checkpoints").glob("epoch-*.keras"))[-1]
    with zipfile.ZipFile(newest) as keras_file, \
            h5py.File(io.BytesIO(keras_file.read("model.weights.h5"))) as h5:
        assert "layers" in h5 and "optimizer" in h5
    stopped_at = int(newest.stem.split("-")[1])
    total = stopped_at + 3

    proc = subprocess.run(["make", "--no-print-directory", "train"], cwd=ROOT, text=True,
                          env=train_env(tmp_path, RESUME=str(run), EPOCHS=str(total), NP="1"),
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"resuming {run} from epoch {stopped_at}" in proc.stdout
    assert "on data.py's in-memory set" in proc.stdout  # the run's data, said
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["initial_epoch"], metrics["epochs"], metrics["world_size"]) == (
        stopped_at, total, 1)
    assert (run / "checkpoints" / f"epoch-{total:03d}.keras").is_file()
    assert metrics["val_accuracy"] >= 0.95
