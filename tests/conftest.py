"""For every test: Keras 2 (tf_keras) as tf.keras where tf_keras is installed (TensorFlow >=
2.16), as every process the project starts has it. Read when TensorFlow is imported, so here,
before any test module imports it."""

import os

from preflight.proc import keras_2

keras_2(os.environ)
