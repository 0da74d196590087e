"""TensorFlow's pooled (BFC) memory allocator on the CPU.

By default TensorFlow takes each CPU tensor from the C library's `malloc`.
A training step's largest tensors (the embedding gradient, the logits) are
big enough that glibc maps them fresh from the kernel and unmaps them when
freed, so every step pays page faults and page clearing for them again.
TensorFlow's best-fit-with-coalescing (BFC) allocator, the one it uses on
GPUs, keeps that memory pooled instead: the T5-small training step in
BENCHMARKS.md runs 6-8% faster with it for 1-2% more peak memory.

TensorFlow reads its choice once, when its runtime starts (the first
operation), from `TF_CPU_ALLOCATOR_USE_BFC`. `dss-keras` and the recipes turn
it on at start-up; a script that uses the library calls
`use_pooled_cpu_allocator()` before its first TensorFlow operation, or sets
the variable itself. `TF_CPU_ALLOCATOR_USE_BFC=false` keeps `malloc`.

```python
import dss_keras

dss_keras.use_pooled_cpu_allocator()  # before TensorFlow's first operation
```
"""

from __future__ import annotations

import logging
import os
import sys

ENVIRONMENT_VARIABLE = "TF_CPU_ALLOCATOR_USE_BFC"


def use_pooled_cpu_allocator(warn: bool = True) -> bool:
    """Asks TensorFlow for its BFC allocator on the CPU, unless the user chose already.

    Args:
        warn: Log a warning when TensorFlow's runtime has started already.

    Returns:
        Whether the pooled allocator will be used: `False` when
        `TF_CPU_ALLOCATOR_USE_BFC` says otherwise, or when TensorFlow's runtime
        has started already (its allocator is then fixed, and the variable is
        left as it was).
    """
    if _tensorflow_runtime_started():
        if warn:
            logging.getLogger(__name__).warning(
                "TensorFlow has run an operation already, so its CPU allocator is fixed; call "
                "use_pooled_cpu_allocator() earlier or set %s=true before starting Python.",
                ENVIRONMENT_VARIABLE)
        return False
    os.environ.setdefault(ENVIRONMENT_VARIABLE, "true")
    return os.environ[ENVIRONMENT_VARIABLE].strip().lower() in ("1", "true")


def _tensorflow_runtime_started() -> bool:
    """Whether TensorFlow's eager context, and with it the CPU allocator, exists."""
    if "tensorflow" not in sys.modules:
        return False
    from tensorflow.python.eager import context

    return bool(getattr(context.context(), "_initialized", False))
