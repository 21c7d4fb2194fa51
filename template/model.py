"""The model and its training contract: one of the three files you edit (with data.py and
config.toml). train.py compiles build() with loss() and metrics() and reports whatever metrics
they produce; BEST names the metric that picks the best checkpoint.

A regression instead: build() ends in Dense(1), loss() returns "mse", metrics() ["mae"],
BEST = ("val_mae", "min").
"""

from __future__ import annotations

import tensorflow as tf

import data

BEST = ("val_accuracy", "max")  # (metric, "max" or "min"): which checkpoint is best.keras


def build() -> tf.keras.Model:
    """A small CNN for the 8x8 digits. Under MIXED_PRECISION=1 layers compute in float16; the
    last one stays float32 (dtype=) so the softmax and the loss do not lose precision."""
    return tf.keras.Sequential([
        tf.keras.layers.Input(shape=data.INPUT_SHAPE),
        tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu"),
        tf.keras.layers.Conv2D(64, 3, padding="same", activation="relu"),
        tf.keras.layers.MaxPooling2D(),
        tf.keras.layers.Flatten(),
        tf.keras.layers.Dropout(0.25),
        tf.keras.layers.Dense(128, activation="relu"),
        tf.keras.layers.Dense(data.NUM_CLASSES, activation="softmax", dtype="float32"),
    ])


def loss() -> tf.keras.losses.Loss | str:
    return "sparse_categorical_crossentropy"


def metrics() -> list:
    """Fresh metric objects (they hold state) for each compile."""
    return ["accuracy"]
