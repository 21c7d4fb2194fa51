"""The template's parts without a cluster: configuration, data files, sharding, checkpoints, and
the training knobs (in a single Horovod process). Written against the template's contract, not
its example data, so that a project that swaps model.py and data.py keeps passing them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest

from preflight.proc import job_env

TEMPLATE = Path(__file__).resolve().parents[2] / "template"
sys.path.insert(0, str(TEMPLATE))
import config  # noqa: E402


def test_config_toml_is_the_only_home_of_the_defaults() -> None:
    assert all(f.default is MISSING for f in fields(config.Config))
    cfg = config.load([])  # every key present, each of its type
    assert cfg.problems() == []


def test_command_line_overrides_the_config_file(tmp_path: Path) -> None:
    text = config.DEFAULT_FILE.read_text().replace("epochs = 15", "epochs = 7")
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(text)
    cfg = config.load(["--config", str(cfg_file), "--batch-size", "16", "--fp16-allreduce"])
    assert (cfg.epochs, cfg.batch_size, cfg.fp16_allreduce) == (7, 16, True)
    assert config.load(["--config", str(cfg_file), "--no-fp16-allreduce"]).fp16_allreduce is False


@pytest.mark.parametrize("edit, args", [
    (("epochs = 15", "epoch = 15"), []),          # unknown key (and one missing)
    (("accumulate = 1 ", ""), []),                 # a missing key
    (("lr = 0.001", 'lr = "fast"'), []),           # a wrong type
    (None, ["--epochs", "0"]),
    (None, ["--accumulate", "0"]),
    (None, ["--epochs", "abc"]),
])
def test_bad_configuration_is_refused(tmp_path: Path, edit, args) -> None:
    text = config.DEFAULT_FILE.read_text()
    if edit:
        text = text.replace(*edit)
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(text)
    with pytest.raises(SystemExit):
        config.load(["--config", str(cfg_file), *args])


# --- data files: tf.data in a subprocess (TensorFlow stays out of the test process) ----------

def run_template(code: str, *args: str, np: int = 1) -> dict:
    """Runs code with template/ importable, in np processes under horovodrun when np > 1, and
    returns the JSON that rank 0 (or the one process) prints last."""
    env = job_env({"PYTHONPATH": str(TEMPLATE), "CUDA_VISIBLE_DEVICES": ""})
    argv = [sys.executable, "-c", code, *args]
    if np > 1:
        argv = [str(Path(sys.executable).with_name("horovodrun")), "-np", str(np), "-H",
                f"localhost:{np}", *argv]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for line in reversed(proc.stdout.replace("[1,0]<stdout>:", "\n").splitlines()):
        try:
            return json.JSONDecoder().raw_decode(line.strip())[0]
        except json.JSONDecodeError:
            continue
    raise AssertionError(f"no JSON in {proc.stdout[-2000:]}")


ROUND_TRIP = """
import json, sys
from pathlib import Path
import numpy as np
import tfenv, config, data, records
folder, fmt, gz = Path(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
cfg = config.load([])
x, y, xv, yv = data.load(cfg.val_fraction, cfg.seed)
records.write(folder, "train", x, y, fmt, 5, gz)
records.write(folder, "val", xv, yv, fmt, 2, gz)
train, val = records.training_and_validation(str(folder), "")
shards = [train.shard(r, 3) for r in range(3)]
seen = [records.dataset(s, data.from_record, 64, rank=r, size=3, by_record=b)
        for r, (s, b) in enumerate(shards)]
xs = np.concatenate([np.concatenate([b[0].numpy() for b in ds]) for ds in seen])
few = train.shard(1, 9)  # fewer files than ranks
print(json.dumps({
    "files": [list(s.files) for s, _ in shards], "by_record": [b for _, b in shards],
    "all": list(train.files), "val": list(val.files), "count": records.count(train),
    "n": len(x), "n_val": len(xv), "read": len(xs), "sum_read": float(np.abs(xs).sum()),
    "sum": float(np.abs(x).sum()), "shape": list(xs.shape[1:]),
    "input_shape": list(data.INPUT_SHAPE),
    "few_by_record": few[1], "few_files": len(few[0].files),
    "val_count": records.count(val)}))
"""


@pytest.mark.parametrize("fmt, gz", [("csv", False), ("tfrecord", True)])
def test_files_are_split_by_rank_disjoint_and_read_back_whole(tmp_path: Path, fmt: str,
                                                              gz: bool) -> None:
    got = run_template(ROUND_TRIP, str(tmp_path), fmt, "1" if gz else "0")
    per_rank = got["files"]
    assert not got["by_record"][0] and [len(f) for f in per_rank] == [2, 2, 1]
    flat = [f for files in per_rank for f in files]
    assert sorted(flat) == sorted(got["all"]) and len(set(flat)) == len(flat)  # disjoint, cover
    assert all(Path(f).name.startswith("train-") for f in got["all"])
    assert [Path(f).name.startswith("val-") for f in got["val"]] == [True, True]
    assert got["count"] == got["read"] == got["n"] and got["val_count"] == got["n_val"]
    assert got["sum_read"] == pytest.approx(got["sum"], rel=1e-5)
    assert got["shape"] == got["input_shape"]
    assert got["few_by_record"] and got["few_files"] == 5  # 5 files, 9 ranks: by record


BY_RECORD = """
import json, sys
import numpy as np
import tfenv, records
folder = sys.argv[1]
x = np.arange(40, dtype="float32").reshape(20, 2)
records.write(__import__("pathlib").Path(folder), "train", x, np.zeros(20), "csv", 1, False)
train, _ = records.training_and_validation(folder, "")
ident = lambda r: (__import__("tensorflow").stack([r["f0"], r["f1"]]), r["label"])
got = [sorted(float(v) for b in records.dataset(train, ident, 4, rank=r, size=3, by_record=True)
              for v in b[0].numpy()[:, 0]) for r in range(3)]
print(json.dumps(got))
"""


def test_fewer_files_than_ranks_shards_by_record(tmp_path: Path) -> None:
    got = run_template(BY_RECORD, str(tmp_path))
    firsts = [v for rank in got for v in rank]
    assert sorted(firsts) == [float(2 * i) for i in range(20)]  # each record on one rank
    assert [len(rank) for rank in got] == [7, 7, 6]


def test_files_that_do_not_form_a_data_set_are_refused_by_name(tmp_path: Path) -> None:
    import records  # TensorFlow, imported here only: the other tests run it in a subprocess
    (tmp_path / "a.csv").write_text("x,label\n1,2\n")
    (tmp_path / "b.csv").write_text("x,y,label\n1,2,3\n")
    with pytest.raises(records.DataError, match="same header"):
        records.training_and_validation(str(tmp_path), "")
    (tmp_path / "b.csv").unlink()
    (tmp_path / "c.tfrecord").write_bytes(b"")
    with pytest.raises(records.DataError, match="mix formats"):
        records.training_and_validation(str(tmp_path), "")
    (tmp_path / "c.tfrecord").unlink()
    (tmp_path / "a.csv").write_text("x,y\n1,2\n")
    with pytest.raises(records.DataError, match="no column 'label'"):
        records.training_and_validation(str(tmp_path), "")
    with pytest.raises(records.DataError, match="no training files"):
        records.training_and_validation(str(tmp_path / "nothing*"), "")


IMAGES = """
import json, sys
from pathlib import Path
import numpy as np
import tfenv, records
folder = Path(sys.argv[1])
# Images of one grey level per class (0.2, 0.5, 0.8), 20x30 RGB, PNG for training, JPEG for
# validation; read back resized to 10x15.
y = np.arange(12) % 3
x = np.ones((12, 20, 30, 3), "float32") * (0.2 + 0.3 * y)[:, None, None, None]
records.write_images(folder, x[:9], y[:9], ".png")
records.write_images(folder / "val", x[9:], y[9:], ".jpg")
rec = records.Record(image_size=(10, 15), channels=3)
train, val = records.training_and_validation(str(folder), "", rec)
ident = lambda r: (r["image"], r["label"])
shards = [train.shard(r, 2)[0] for r in range(2)]
def read(file_set):
    xs, ys = zip(*[(b[0].numpy(), b[1].numpy()) for b in records.dataset(file_set, ident, 4,
                                                                         record=rec)])
    xs, ys = np.concatenate(xs), np.concatenate(ys)
    return {"labels": sorted(ys.tolist()), "shape": list(xs.shape[1:]),
            "levels": {int(k): float(xs[ys == k].mean()) for k in set(ys.tolist())},
            "want": sorted(int(Path(f).parent.name) for f in file_set.files)}
print(json.dumps({"fmt": train.fmt, "classes": list(train.columns),
                  "shards": [list(s.files) for s in shards], "all": list(train.files),
                  "val": list(val.files), "count": records.count(train),
                  "read": [read(s) for s in shards], "read_val": read(val)}))
"""


def test_image_folders_are_classes_split_by_file_and_decoded_at_the_records_size(
        tmp_path: Path) -> None:
    got = run_template(IMAGES, str(tmp_path))
    assert (got["fmt"], got["classes"], got["count"]) == ("images", ["0", "1", "2"], 9)
    flat = [f for files in got["shards"] for f in files]
    assert sorted(flat) == sorted(got["all"]) and len(set(flat)) == 9  # disjoint, cover
    assert [len(files) for files in got["shards"]] == [5, 4]
    assert all(Path(f).parts[-3] == "val" and f.endswith(".jpg") for f in got["val"])
    for read in [*got["read"], got["read_val"]]:
        assert read["labels"] == read["want"]  # each image labelled by its class folder
        assert read["shape"] == [10, 15, 3]
        for label, level in read["levels"].items():
            assert level == pytest.approx(0.2 + 0.3 * int(label), abs=0.01)


IMAGENET = """
import json, sys
from pathlib import Path
import numpy as np
import tfenv, records
import tensorflow as tf
folder = Path(sys.argv[1])
y = np.arange(20) % 4
x = np.ones((20, 16, 16, 3), "float32") * (0.1 + 0.25 * y)[:, None, None, None]
records.write(folder, "train", x[:16], y[:16], "imagenet", 3, False)
records.write(folder, "val", x[16:], y[16:], "imagenet", 1, True)
# What a user's data.py declares for this layout (labels from 1 in the files).
rec = records.Record(label="image/class/label", features={
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
def from_record(r):
    return records.decode_image(r["image/encoded"], (8, 8), 3), r["image/class/label"] - 1
train, val = records.training_and_validation(str(folder), "", rec)
xs, ys = zip(*[(b[0].numpy(), b[1].numpy())
               for b in records.dataset(train, from_record, 5, record=rec)])
xs, ys = np.concatenate(xs), np.concatenate(ys)
first_x, first_y = records.first_example(val, from_record, rec)
print(json.dumps({"count": records.count(train), "val_count": records.count(val),
                  "labels": sorted(ys.tolist()), "shape": list(xs.shape[1:]),
                  "levels": {int(k): float(xs[ys == k].mean()) for k in range(4)},
                  "first": [list(first_x.shape), int(first_y)]}))
"""


def test_imagenet_style_tfrecords_train_through_the_record_hook(tmp_path: Path) -> None:
    got = run_template(IMAGENET, str(tmp_path))
    assert (got["count"], got["val_count"]) == (16, 4)
    assert got["labels"] == sorted(i % 4 for i in range(16))
    assert got["shape"] == [8, 8, 3] and got["first"] == [[8, 8, 3], 0]
    for label, level in got["levels"].items():
        assert level == pytest.approx(0.1 + 0.25 * int(label), abs=0.02)  # JPEG: near


def test_a_resumed_run_keeps_its_data_unless_told_otherwise(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"data": "/d", "val_data": "/v"}))
    cfg = config.parse(["--resume", str(tmp_path)])
    assert (cfg.data, cfg.val_data) == ("/d", "/v")
    other = config.parse(["--resume", str(tmp_path), "--data", "/other"])
    assert (other.data, other.val_data) == ("/other", "")  # told otherwise: config.toml's rest


def test_a_config_mistake_is_one_line_with_the_fix(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(config.DEFAULT_FILE.read_text().replace("warmup = 2", "warmpu = 2"))
    with pytest.raises(config.ConfigError, match="unknown key 'warmpu'; did you mean 'warmup'"):
        config.parse(["--config", str(cfg_file)])
    with pytest.raises(config.ConfigError, match="invalid int value: 'abc'"):
        config.parse(["--epochs", "abc"])


# --- the knobs, on Horovod's real optimizer in one process ------------------------------------

KNOBS = """
import json, sys
import tfenv, config, loop
import horovod.tensorflow.keras as hvd
import numpy as np, tensorflow as tf
hvd.init()
def moved_after(steps, gradient, *flags):
    # One weight, loss = gradient x weight: Keras' own fit, Horovod's optimizer from loop.py.
    cfg = config.load(["--lr", "0.1", *flags])
    model = tf.keras.Sequential([tf.keras.layers.Dense(1, use_bias=False,
                                                       kernel_initializer="ones")])
    model.compile(optimizer=loop.distributed_optimizer(cfg, hvd.size()),
                  loss=lambda y, pred: tf.reduce_mean(pred))
    x = np.full((steps, 1), gradient, dtype="float32")
    model.fit(x, np.zeros((steps, 1)), batch_size=1, epochs=1, shuffle=False, verbose=0)
    return float(model.layers[0].kernel.numpy()[0, 0]) != 1.0
tiny = 1e-9  # below float16's smallest number: sent as float16 it arrives as 0
got = {"plain_1": moved_after(1, 0.5), "accumulate_1": moved_after(1, 0.5, "--accumulate", "2"),
       "accumulate_2": moved_after(2, 0.5, "--accumulate", "2"),
       "fp32_tiny": moved_after(1, tiny), "fp16_tiny": moved_after(1, tiny, "--fp16-allreduce"),
       "fp16_normal": moved_after(1, 0.5, "--fp16-allreduce")}
if hvd.rank() == 0:
    print(json.dumps(got))
"""


def test_accumulation_applies_every_nth_batch_and_fp16_sends_half_precision() -> None:
    # Two processes: with one, Horovod skips the allreduce, and the compression with it.
    got = run_template(KNOBS, np=2)
    assert got["plain_1"] and not got["accumulate_1"]  # one batch only accumulates ...
    assert got["accumulate_2"]  # ... the second applies
    assert got["fp32_tiny"] and not got["fp16_tiny"]  # 1e-9 became 0: the allreduce sent fp16
    assert got["fp16_normal"]


MIXED = """
import json
import tfenv, config, loop
import horovod.tensorflow.keras as hvd
cfg = config.load(["--mixed-precision", "--epochs", "1"])
loop.start(cfg)
model = loop.compiled_model(cfg, 1)
data = loop.in_memory(cfg, 0, 1)
history = model.fit(data.train, steps_per_epoch=3, epochs=1, verbose=0)
print(json.dumps({"compute": [l.compute_dtype for l in model.layers],
                  "variables": sorted({v.dtype.name for v in model.trainable_variables}),
                  "loss": history.history["loss"][-1]}))
"""


def test_mixed_precision_computes_in_float16_and_keeps_float32_weights() -> None:
    got = run_template(MIXED)
    assert "float16" in got["compute"]
    assert got["variables"] == ["float32"]
    assert np.isfinite(got["loss"])


def test_last_checkpoint_is_the_highest_epoch(tmp_path: Path) -> None:
    import loop  # Horovod and TensorFlow, imported here only
    (tmp_path / "checkpoints").mkdir()
    for n in (1, 12, 3):
        (tmp_path / "checkpoints" / f"epoch-{n:03d}.keras").write_bytes(b"x")
    (tmp_path / "checkpoints" / "tmpabc.keras").write_bytes(b"partial")
    (tmp_path / "checkpoints" / "best.keras").write_bytes(b"x")
    path, epoch = loop.last_checkpoint(tmp_path)
    assert (path.name, epoch) == ("epoch-012.keras", 12)
    assert loop.last_checkpoint(tmp_path / "nothing") is None
