"""Import this before TensorFlow (train.py, train_elastic.py, evaluate.py, records.py do).

TF_USE_LEGACY_KERAS=1 makes tf.keras the Keras 2 of the tf_keras package on TensorFlow >= 2.16,
which Horovod 0.28.1's Keras layer needs. TensorFlow reads it once, at import, in every process;
it is set only where tf_keras is installed (the old stack, TF=2.15, has Keras 2 built in and
would send tf.keras to a tf_keras it does not have).
"""

from __future__ import annotations

import importlib.util
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, once per rank
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
