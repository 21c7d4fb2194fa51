"""The data pipeline: scikit-learn's 8x8 digits (shipped inside the package, no download).

Replace load() with your own data; keep the split deterministic (every rank must agree on it)
and let shard() give each rank its own slice.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from sklearn.datasets import load_digits

NUM_CLASSES = 10
INPUT_SHAPE = (8, 8, 1)


def load(val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_val, y_val), images scaled to [0, 1], the same split on every rank."""
    digits = load_digits()
    x = (digits.images / 16.0).astype("float32")[..., np.newaxis]
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(len(x) * val_fraction)
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def shard(x: np.ndarray, y: np.ndarray, rank: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank r takes every size-th sample from r: disjoint shards that together cover the set."""
    return x[rank::size], y[rank::size]


def training_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    # repeat(): every rank must run the same number of steps (steps_per_epoch), whatever the
    # size of its shard, or the allreduce of the last step waits forever.
    return (tf.data.Dataset.from_tensor_slices((x, y))
            .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def validation_dataset(x: np.ndarray, y: np.ndarray, batch_size: int) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
