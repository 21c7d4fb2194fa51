"""The data: one of the three files you edit (with model.py and config.toml).

Two ways in, one shape out:
- load(): an in-memory data set, used when no DATA is given. Here scikit-learn's 8x8 digits
  (shipped inside the package, no download). Keep the split deterministic: every rank must agree.
- RECORD and from_record(): your files (make train DATA=...). RECORD says how records.py parses
  one record into a dict of tensors (CSV: every column by name; TFRecord: RECORD.features, a
  tf.io feature spec; image folders: "image" and "label"); from_record() makes that dict what
  the model takes. `make data-files` writes load()'s set in each format, to show them.

ImageNet-style TFRecords (image/encoded JPEG bytes, image/class/label int64 from 1), e.g.:
    RECORD = records.Record(label="image/class/label", features={
        "image/encoded": tf.io.FixedLenFeature([], tf.string),
        "image/class/label": tf.io.FixedLenFeature([], tf.int64)})
    def from_record(record):
        image = records.decode_image(record["image/encoded"], INPUT_SHAPE[:2], INPUT_SHAPE[2])
        return image, record["image/class/label"] - 1
"""

from __future__ import annotations

# isort: off
import records  # first: it sets TensorFlow's environment (tfenv) before importing it
import numpy as np
import tensorflow as tf
# isort: on
from sklearn.datasets import load_digits

INPUT_SHAPE = (8, 8, 1)  # one example as the model takes it
NUM_CLASSES = 10
# How one record of your files is parsed: the target's column (CSV) or feature (TFRecord); the
# TFRecord feature spec (default: a float list "features" and a float "label"); CSV columns that
# are not numbers (name -> default, "" for strings); the size image folders are resized to.
RECORD = records.Record(label="label", image_size=INPUT_SHAPE[:2], channels=INPUT_SHAPE[2])


def load(val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val), images scaled to [0, 1], the same split on every rank."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def from_record(record: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """One parsed record as the model takes it: (x, integer label). The features are an image's
    pixels, a TFRecord's "features", or a CSV row's columns other than the label, in order."""
    if "image" in record:
        x = record["image"]
    elif "features" in record:
        x = record["features"]
    else:
        x = tf.stack([value for name, value in record.items() if name != RECORD.label])
    return tf.reshape(x, INPUT_SHAPE), tf.cast(record[RECORD.label], tf.int64)
