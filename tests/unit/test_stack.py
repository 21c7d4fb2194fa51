"""The stack as make setup built it. On TensorFlow >= 2.16 Horovod must be the patched build
(scripts/horovod-0.28.1.patch): an unpatched one imports, then fails in the first callback with
"module 'keras.backend' has no attribute 'constant'", so this fails loudly instead. The old stack
(make setup TF=2.15) is Horovod as released."""

from __future__ import annotations

import json
import os
from pathlib import Path

import horovod
import tensorflow as tf

ROOT = Path(horovod.__file__).parent
PATCHED = (2, 16)  # from here on, tf.keras is tf_keras only through the patch


def tf_version() -> tuple[int, int]:
    major, minor = tf.__version__.split(".")[:2]
    return int(major), int(minor)


def test_horovod_is_the_build_the_stack_needs():
    text = (ROOT / "tensorflow" / "keras" / "__init__.py").read_text()
    if tf_version() >= PATCHED:
        assert "local patch:" in text, (
            f"Horovod in {ROOT} is unpatched on TensorFlow {tf.__version__}: make setup FORCE=1")
    else:
        assert "local patch:" not in text, "the old stack runs Horovod as released"


def test_horovod_was_built_against_the_installed_tensorflow():
    built = json.loads((ROOT / "metadata.json").read_text())["tensorflow"]
    assert built == tf.__version__, f"built against {built}: make setup FORCE=1"


def test_tf_keras_is_keras_2_and_horovods_callbacks_use_it():
    import horovod.tensorflow.keras.callbacks as callbacks

    if tf_version() >= PATCHED:
        assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    assert hasattr(tf.keras.backend, "constant"), "tf.keras is Keras 3 (no backend.constant)"
    for name in ("constant", "get_value", "set_value"):  # what the callbacks call
        assert hasattr(callbacks.K, name), f"Horovod's Keras backend lacks {name}: Keras 3?"
