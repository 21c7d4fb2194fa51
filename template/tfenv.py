"""Import this before TensorFlow (train.py, train_elastic.py, evaluate.py, check.py, records.py
do): it sets TensorFlow's environment and imports it without its start-up notes.

TF_USE_LEGACY_KERAS=1 makes tf.keras the Keras 2 of the tf_keras package on TensorFlow >= 2.16,
which Horovod 0.28.1's Keras layer needs. TensorFlow reads it once, at import, in every process;
it is set only where tf_keras is installed (the old stack, TF=2.15, has Keras 2 built in and
would send tf.keras to a tf_keras it does not have).
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter, once per rank
if importlib.util.find_spec("tf_keras") is not None:
    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# What TensorFlow's C++ libraries print at import through absl, which no setting turns off:
# not news. Anything else printed meanwhile (a warning, an import error) is shown.
NOTES = re.compile(rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                   rb"|I0000 [\d:. ]+\d+ (port|cpu_feature_guard)\.cc:\d+\]"
                   rb"|To enable the following instructions: .*rebuild TensorFlow)")


def import_quietly() -> None:
    """Imports TensorFlow with file descriptor 2 caught (the C++ notes bypass sys.stderr), then
    shows what was caught less the notes."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            os.write(2, b"".join(line for line in caught.read().splitlines(keepends=True)
                                 if not NOTES.match(line)))


if "tensorflow" not in sys.modules:
    import_quietly()
