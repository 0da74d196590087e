"""TensorFlow's faster CPU settings for training, set only when asked.

The library changes no process-wide setting by itself: a user's process is
the user's. `use_fast_cpu_runtime()` is the one call that asks for these
settings; `dss-keras` and the recipes, which own their process, make it at
start-up.

- Pooled CPU memory (`TF_CPU_ALLOCATOR_USE_BFC=true`, read at TensorFlow's
  first operation). TensorFlow's CPU tensors otherwise come from `malloc`,
  and a step's largest ones (the embedding gradient, the logits) are mapped
  fresh from the kernel and unmapped when freed, so every step pays page
  faults and page clearing for them again.
- oneDNN's kernels (`TF_ENABLE_ONEDNN_OPTS=1`, read when TensorFlow is
  imported). TensorFlow uses them by itself only on CPUs with AVX-512 VNNI,
  BF16 or AMX; elsewhere (AVX2) MatMul runs through Eigen.
- glibc's heap handed back after the first training step, and the step's
  large temporaries as they are freed, through `mallopt` and `malloc_trim`
  (`train_function.flat_train_function`'s `release_memory`).

At the T5-small training shape of BENCHMARKS.md, on an AVX2 CPU, each of the
first two was worth 5-11% of the step time, for 1-2% more peak memory; the
third lowers peak RSS (`train_function` has the figures). A variable the user
has set wins (`=false` and `=0` keep TensorFlow's defaults). A script makes
the call before it imports Keras or TensorFlow:

```python
import dss_keras

dss_keras.use_fast_cpu_runtime()  # then import keras, tensorflow
```
"""

from __future__ import annotations

import logging
import os
import sys

POOLED_ALLOCATOR = "TF_CPU_ALLOCATOR_USE_BFC"
ONEDNN_KERNELS = "TF_ENABLE_ONEDNN_OPTS"

_asked = False  # whether this process called use_fast_cpu_runtime()


def use_fast_cpu_runtime(warn: bool = True) -> dict[str, bool]:
    """Turns on the pooled CPU allocator, oneDNN kernels and glibc heap release.

    Environment variables the user has set are left as they are, and so is a
    setting TensorFlow has read already (oneDNN at import, the allocator at
    the first operation). The heap release applies to models trained after
    the call, when the tensors are pooled.

    Args:
        warn: Log a warning when a setting is off because TensorFlow read it
            before this call.

    Returns:
        `{"onednn_kernels": bool, "pooled_allocator": bool}`: whether each is
        in effect. With oneDNN TensorFlow pools CPU memory in its own
        allocator whatever `TF_CPU_ALLOCATOR_USE_BFC` says.
    """
    global _asked
    _asked = True
    too_late = []
    if "tensorflow" in sys.modules:
        onednn = onednn_in_effect()
        if not onednn and ONEDNN_KERNELS not in os.environ:
            too_late.append(ONEDNN_KERNELS)
    else:
        onednn = _is_true(os.environ.setdefault(ONEDNN_KERNELS, "1"))
    if _tensorflow_running():
        pooled = pooled_allocator_in_effect()
        if not pooled and POOLED_ALLOCATOR not in os.environ:
            too_late.append(POOLED_ALLOCATOR)
    else:
        pooled = _is_true(os.environ.setdefault(POOLED_ALLOCATOR, "true")) or onednn
    if too_late and warn:
        logging.getLogger(__name__).warning(
            "TensorFlow read %s before use_fast_cpu_runtime() was called, so it keeps its "
            "default; call it before importing Keras or TensorFlow.", " and ".join(too_late))
    return {"onednn_kernels": onednn, "pooled_allocator": pooled}


def fast_cpu_runtime_asked() -> bool:
    """Whether this process called `use_fast_cpu_runtime()`."""
    return _asked


def _is_true(value: str) -> bool:
    return value.strip().lower() in ("1", "true")


def _tensorflow_running() -> bool:
    """Whether TensorFlow's eager context, and with it the CPU allocator, exists."""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context

    return bool(getattr(context.context(), "_initialized", False))


def onednn_in_effect() -> bool:
    """Whether TensorFlow, imported, rewrites its graphs onto oneDNN kernels."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


def pooled_allocator_in_effect() -> bool:
    """Whether TensorFlow's running CPU allocator pools memory (only those keep statistics)."""
    import tensorflow as tf

    try:
        tf.config.experimental.get_memory_info("CPU:0")
    except ValueError:
        return False
    return True
