"""What every script does first: find the package from a checkout, and start TensorFlow quietly.

Adds the repo root to sys.path (no `pip install -e .` needed). TensorFlow's C++ start-up lines
(oneDNN, CUDA probing, CPU features) are written straight to the process's stderr before any
log level applies; they are hidden while TensorFlow imports and looks for devices, so the user
sees the progress and the result. `TFSEMISEG_TF_LOGS=1` shows them (e.g. to debug a GPU setup).
Python errors raised meanwhile are still reported.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import tfsemiseg  # noqa: E402,F401  (before TensorFlow: its CPU kernel choice, see tfsemiseg/__init__.py)


def _start_tensorflow_quietly():
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


if not os.environ.get("TFSEMISEG_TF_LOGS"):
    _start_tensorflow_quietly()
