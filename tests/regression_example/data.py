"""A regression data set in place of the digits: scikit-learn's diabetes (442 patients, 10
features, disease progression after a year), the target standardised."""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_diabetes

INPUT_SHAPE = (10,)


def load(val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    y = ((y - y.mean()) / y.std()).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def from_record(features: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    return tf.reshape(features, INPUT_SHAPE), label
