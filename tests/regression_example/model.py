"""A small regression network: mean squared error, mean absolute error, best by val_mae."""

from __future__ import annotations

import tensorflow as tf

import data

BEST = ("val_mae", "min")


def build(sample=None) -> tf.keras.Model:
    return tf.keras.Sequential([
        tf.keras.layers.Input(shape=data.INPUT_SHAPE),
        tf.keras.layers.Dense(32, activation="relu"),
        tf.keras.layers.Dense(1, dtype="float32"),
    ])


def loss() -> tf.keras.losses.Loss | str:
    return "mse"


def metrics() -> list:
    return ["mae"]


def optimizer(lr: float) -> tf.keras.optimizers.Optimizer:
    return tf.keras.optimizers.Adam(lr)


def callbacks(rank0: bool) -> list:
    return []
