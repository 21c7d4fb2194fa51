"""The data: one of the three files you edit (with model.py and config.toml).

Two ways in, one shape out:
- load(): an in-memory data set, used when no DATA is given. Here scikit-learn's 8x8 digits
  (shipped inside the package, no download). Keep the split deterministic: every rank must agree.
- from_record(): one record of your files (make train DATA=...; formats in records.py: a vector
  of floats and a label) as the model takes it. `make data-files` writes load()'s set as such
  files, to show the format.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

INPUT_SHAPE = (8, 8, 1)  # one example as the model takes it
NUM_CLASSES = 10


def load(val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val), images scaled to [0, 1], the same split on every rank."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def from_record(features: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """A record read from files (float32 features, float32 label) as the model takes it."""
    return tf.reshape(features, INPUT_SHAPE), tf.cast(label, tf.int64)
