"""The deep check's rank (preflight --deep): started by horovodrun itself on each host, it does
what the training does first: import TensorFlow and Horovod's TensorFlow layer from the host's
venv (as the job's sys.path finds them), hvd.init(), and one allreduce whose sum it checks.

Unlike the other agents it needs the venv (TensorFlow and Horovod): that is what it tests. A
Horovod built against another TensorFlow fails here with an undefined symbol. It prints one
JSON line per rank: {"event": "horovod", "rank", "size", "hostname", "sum", "expected",
"seconds"}.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import sys
import time


def main() -> int:
    start = time.monotonic()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if importlib.util.find_spec("tf_keras") is not None:  # as train.py: Keras 2 from tf_keras
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    import horovod.tensorflow as hvd
    import tensorflow as tf

    hvd.init()
    total = hvd.allreduce(tf.constant(float(hvd.rank())), op=hvd.Sum)
    print(json.dumps({"event": "horovod", "rank": hvd.rank(), "size": hvd.size(),
                      "hostname": socket.gethostname(), "sum": float(total),
                      "expected": hvd.size() * (hvd.size() - 1) / 2,
                      "seconds": round(time.monotonic() - start, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
