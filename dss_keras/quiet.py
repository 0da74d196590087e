"""Quiet TensorFlow: no C++ log lines or library warnings unless asked.

TensorFlow prints C++ log lines (oneDNN notices, CUDA probes, cost-model
warnings) to the process's standard error, some of them before its own log
level applies. `quiet_tensorflow()` raises the C++ log level and imports
TensorFlow with the standard error file descriptor set aside, so that only
what the program prints is shown. Errors raised while importing are shown in
full; a Ctrl-C while importing shows nothing of it. Call it before anything imports TensorFlow; the CLI and the quickstart
do.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings

_NOISY_WARNINGS = (
    # KerasHub's T5 layers get masks they do not use; the masks are applied
    # through the attention bias.
    r".*does not support masking.*",
    # tf.data datasets come shuffled already.
    r".*`shuffle=True` was passed, but will be ignored.*",
)


def quiet_tensorflow(verbose: bool = False) -> None:
    """Silences TensorFlow's C++ logs and known-harmless warnings, once.

    Args:
        verbose: Leave every log line on (the `--verbose` flag).
    """
    if verbose:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    for pattern in _NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern)
    if "tensorflow" in sys.modules:
        return
    _import_silently()
    logging.getLogger("tensorflow").setLevel(logging.ERROR)


def _import_silently() -> None:
    """Imports TensorFlow and TensorFlow Text with file descriptor 2 sent to a file."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
            import tensorflow_text  # noqa: F401
        except Exception:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
