"""A new project adapted to its own data by editing data.py, model.py and config.toml alone:
generated images as an image folder (one subfolder per class) trained across three simulated
hosts, and the same images as TFRecords in the ImageNet layout; make evaluate agrees."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PY = ROOT / ".venv" / "bin" / "python"

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

# The user's data.py: generated 16x16 RGB images of three patterns (horizontal stripes,
# vertical stripes, a checkerboard) at random periods, phases and tints, with noise.
IMAGE_DATA = '''
# isort: off
import records
import numpy as np
import tensorflow as tf
# isort: on

INPUT_SHAPE = (16, 16, 3)
NUM_CLASSES = 3
RECORD = records.Record(image_size=INPUT_SHAPE[:2], channels=INPUT_SHAPE[2])


def load(val_fraction, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, 900)
    rows, cols = np.mgrid[0:16, 0:16]
    x = np.empty((len(y), 16, 16, 3), "float32")
    for i, label in enumerate(y):
        period, phase = rng.integers(3, 6), rng.integers(0, 6)
        along = [rows, cols, rows + cols][label] if label < 2 else (rows // period + cols // period)
        wave = ((along + phase) // period % 2) if label < 2 else (along % 2)
        tint = rng.uniform(0.4, 1.0, 3)
        x[i] = np.clip(wave[..., None] * tint + rng.normal(0, 0.1, (16, 16, 3)), 0, 1)
    n_val = int(len(x) * val_fraction)
    return x[n_val:], y[n_val:], x[:n_val], y[:n_val]


def from_record(record):
    return record["image"], tf.cast(record[RECORD.label], tf.int64)
'''

# The same data.py for ImageNet-style TFRecords: its RECORD and from_record instead.
IMAGENET_RECORD = '''
RECORD = records.Record(label="image/class/label", features={
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64)})


def from_record(record):
    image = records.decode_image(record["image/encoded"], INPUT_SHAPE[:2], INPUT_SHAPE[2])
    return image, record["image/class/label"] - 1  # the layout counts classes from 1
'''

# The user's model.py: the inputs normalised by statistics of the sample build() gets, early
# stopping on the validation loss (averaged over the ranks, so every rank stops together).
IMAGE_MODEL = '''
import tensorflow as tf

import data

BEST = ("val_accuracy", "max")


def build(sample=None):
    norm = tf.keras.layers.Normalization()
    if sample is not None:
        norm.adapt(sample)
    return tf.keras.Sequential([
        tf.keras.layers.Input(shape=data.INPUT_SHAPE), norm,
        tf.keras.layers.Conv2D(16, 3, activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Conv2D(32, 3, activation="relu"),
        tf.keras.layers.GlobalAveragePooling2D(),
        tf.keras.layers.Dense(data.NUM_CLASSES, activation="softmax", dtype="float32"),
    ])


def loss():
    return "sparse_categorical_crossentropy"


def metrics():
    return ["accuracy"]


def optimizer(lr):
    return tf.keras.optimizers.Adam(lr)


def callbacks(rank0):
    return [tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=3)]
'''


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """make new-project, then the user's three edits."""
    dest = tmp_path_factory.mktemp("own-data") / "shapes"
    made = subprocess.run(["make", "--no-print-directory", "new-project", f"DEST={dest}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    (dest / "template" / "data.py").write_text(IMAGE_DATA)
    (dest / "template" / "model.py").write_text(IMAGE_MODEL)
    toml = dest / "template" / "config.toml"
    toml.write_text(toml.read_text().replace("epochs = 15", "epochs = 12")
                    .replace("lr = 0.001", "lr = 0.003"))
    return dest


def data_files(project: Path, dest: Path, fmt: str) -> None:
    """What make data-files runs: data.py's load() written as files."""
    proc = subprocess.run([str(VENV_PY), "template/records.py", str(dest), "--format", fmt,
                           "--files", "3", "--val-files", "1"], cwd=project,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]


def train(cluster, project: Path, tmp_path: Path, hosts: str, data: Path
          ) -> tuple[subprocess.CompletedProcess, Path, dict]:
    """The project's make train on h1 (its own scripts, this repository's venv)."""
    env = {**os.environ, "HOSTS": hosts, "REPORT": str(tmp_path / "pf.json"),
           "PREFLIGHT_HOSTFILE": str(tmp_path / "hostfile"), "OUT": str(tmp_path / "runs"),
           "DATA": str(data), "VENV": str(ROOT / ".venv"),
           "PYTHONPATH": str(project / "scripts")}
    cluster.fault("h3", "debian-hosts", "off")  # a job across h3 needs Debian's line gone
    try:
        proc = cluster.exec("h1", str(VENV_PY), "-m", "preflight.train", env=env,
                            cwd=str(project), timeout=900)
    finally:
        cluster.fault("h3", "debian-hosts", "on")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "runs").iterdir()
    return proc, run, json.loads((run / "metrics.json").read_text())


def evaluate(project: Path, run: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(VENV_PY), "template/evaluate.py", str(run), "--checkpoint",
                           "best"], cwd=project, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_an_image_folder_trains_across_three_hosts(cluster, project: Path,
                                                   tmp_path: Path) -> None:
    images = tmp_path / "images"
    data_files(project, images, "images")
    assert sorted(p.name for p in images.iterdir()) == ["0", "1", "2", "val"]
    proc, run, metrics = train(cluster, project, tmp_path, "h1:1,h2:1,h3:1", images)
    assert sorted(metrics["rank_hosts"]) == ["h1", "h2", "h3"]
    every = [f for files in metrics["rank_files"] for f in files]
    assert len(every) == len(set(every)) == 720  # each image on one rank: split by file
    assert metrics["best"]["value"] >= 0.9  # val_accuracy of best.keras, stated
    assert "720 records in 720 images, 240 per rank" in proc.stdout
    done = proc.stdout.strip().splitlines()[-1]
    assert re.search(r"^done: val_accuracy [\d.]+ at the last epoch, best [\d.]+ at epoch "
                     r"\d+ \(best\.keras\)", done), done
    # make evaluate on best.keras: the same accuracy, and as quiet as make train.
    evaluated = evaluate(project, run)
    shown = dict(re.findall(r"(val_\w+) ([\d.]+)", evaluated.stdout))
    assert abs(float(shown["val_accuracy"]) - metrics["best"]["value"]) < 0.03
    assert evaluated.stderr.strip() == "", evaluated.stderr[-2000:]


def test_imagenet_style_tfrecords_train_by_editing_data_py(cluster, project: Path,
                                                           tmp_path: Path) -> None:
    records = tmp_path / "imagenet"
    data_files(project, records, "imagenet")
    data_py = project / "template" / "data.py"
    before = data_py.read_text()
    start = before.index("RECORD = ")
    data_py.write_text(before[:start] + before[start:].split("\n", 1)[1]
                       .replace("\ndef from_record", "\ndef images_from_record")
                       + IMAGENET_RECORD)
    try:
        proc, run, metrics = train(cluster, project, tmp_path, "h1:1,h2:1", records)
        assert metrics["best"]["value"] >= 0.9
        assert [len(files) for files in metrics["rank_files"]] == [2, 1]  # 3 files, by file
        evaluate(project, run)
    finally:
        data_py.write_text(before)
