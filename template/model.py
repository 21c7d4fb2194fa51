"""The model and its training contract: one of the three files you edit (with data.py and
config.toml). train.py compiles build() with loss(), metrics() and optimizer() (which Horovod
wraps) and reports whatever metrics they produce; BEST names the metric that picks the best
checkpoint; callbacks() adds your own to fit. make train checks all of it before launching.

A regression instead: build() ends in Dense(1), loss() returns "mse", metrics() ["mae"],
BEST = ("val_mae", "min").
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import data

# (metric, "max" or "min"): which checkpoint is best.keras. A metric of the validation set is
# "val_" and a name metrics() reports ("val_accuracy"), or "val_loss".
BEST = ("val_accuracy", "max")


def build(sample: np.ndarray | None = None) -> tf.keras.Model:
    """A small CNN for the 8x8 digits. sample: the first training inputs (up to 1024), e.g. for
    tf.keras.layers.Normalization().adapt(sample); None when no data is at hand. Every rank
    builds the model; rank 0's weights (an adapted layer's statistics too) reach the others.
    Under MIXED_PRECISION=1 layers compute in float16; the last one stays float32 (dtype=) so
    the softmax and the loss do not lose precision."""
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


def optimizer(lr: float) -> tf.keras.optimizers.Optimizer:
    """The optimizer at lr (already scaled by the world size); train.py wraps it in Horovod's
    DistributedOptimizer and warms lr up over config.toml's warmup epochs."""
    return tf.keras.optimizers.Adam(lr)


def callbacks(rank0: bool) -> list[tf.keras.callbacks.Callback]:
    """Your callbacks, added to fit on every rank (rank0: whether this one is rank 0). They run
    after Horovod's metric averaging, so the logs they see are the means over all ranks.
    - Anything that changes training (a learning-rate schedule, early stopping) runs on every
      rank and must decide the same everywhere: a rank that stops while the others go on waits
      for ever in the next allreduce. Decide on the averaged metrics in the logs (the same on
      every rank), never on a rank's own batch values or clock.
    - Anything that writes or prints (files, extra logging): rank 0 alone (return it only when
      rank0), or every host writes the same file.
    E.g. [tf.keras.callbacks.EarlyStopping(monitor="val_loss", patience=3)]."""
    return []
