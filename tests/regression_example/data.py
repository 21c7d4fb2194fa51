"""A regression data set in place of the digits: scikit-learn's diabetes (442 patients, 10
features, disease progression after a year), the target standardised."""

from __future__ import annotations

# isort: off
import records
import numpy as np
import tensorflow as tf
# isort: on
from sklearn.datasets import load_diabetes

INPUT_SHAPE = (10,)
RECORD = records.Record()  # make data-files' layout: "features" (or columns) and "label"


def load(val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_diabetes(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype("float32")
    y = ((y - y.mean()) / y.std()).astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def from_record(record: dict[str, tf.Tensor]) -> tuple[tf.Tensor, tf.Tensor]:
    """A TFRecord's "features", or a CSV row's columns other than the label."""
    x = record["features"] if "features" in record else tf.stack(
        [value for name, value in record.items() if name != RECORD.label])
    return tf.reshape(x, INPUT_SHAPE), record[RECORD.label]
