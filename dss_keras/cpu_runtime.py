"""TensorFlow's faster CPU settings for training: pooled memory and oneDNN kernels.

Two of TensorFlow's defaults cost a CPU training step time:

- Its CPU tensors come from the C library's `malloc`. A step's largest
  tensors (the embedding gradient, the logits) are big enough that glibc maps
  them fresh from the kernel and unmaps them when freed, so every step pays
  page faults and page clearing for them again. TensorFlow's
  best-fit-with-coalescing (BFC) allocator, the one it uses on GPUs, keeps
  that memory pooled (`TF_CPU_ALLOCATOR_USE_BFC=true`, read when TensorFlow's
  runtime starts: its first operation).
- It rewrites its graphs onto oneDNN's kernels only on CPUs with AVX-512
  VNNI, BF16 or AMX; elsewhere (AVX2 CPUs) MatMul runs through Eigen
  (`TF_ENABLE_ONEDNN_OPTS=1`, read when TensorFlow is imported).

At the T5-small training shape of BENCHMARKS.md, on an AVX2 CPU, each was
worth 5-11% of the step time, for 1-2% more peak memory. `dss-keras` and the
recipes turn both on at start-up, unless the variable is set already (`=false`
and `=0` keep TensorFlow's defaults). A script that uses the library calls
`use_fast_cpu_runtime()` before it imports Keras or TensorFlow:

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


def use_fast_cpu_runtime(warn: bool = True) -> dict[str, bool]:
    """Turns on the pooled CPU allocator and oneDNN kernels where the user has not chosen.

    A setting TensorFlow has read already (oneDNN at import, the allocator at
    the first operation) is left as it is.

    Args:
        warn: Log a warning when a setting is off because TensorFlow read it
            before this call.

    Returns:
        `{"onednn_kernels": bool, "pooled_allocator": bool}`: whether each is
        in effect. With oneDNN TensorFlow pools CPU memory in its own
        allocator whatever `TF_CPU_ALLOCATOR_USE_BFC` says.
    """
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
