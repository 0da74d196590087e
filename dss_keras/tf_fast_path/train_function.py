"""One flat `tf.function` per training step; the heap handed back after the first.

Keras' TensorFlow trainer wraps the step in two nested `tf.function`s (one per
batch inside one per iterator call). TensorFlow then keeps the traced step
twice, as the inner function and inlined into the outer one: about 175 MB at
the t5-v1_1-small shape. `flat_train_function` traces the step once, inside a
single function that reads the batch from the iterator itself.

The first call also traces the step and lets TensorFlow optimise the graph;
glibc keeps the memory those temporaries free in its heap. With
`release_memory`, glibc maps every allocation of 256 KiB or more on its own
during the first step, so that the large ones go back to the system as they
are freed (`map_large_allocations()`; after it, a fixed 32 MiB, the highest
glibc's own threshold goes, as some blocks of that size are made every step),
and after the first step the rest is handed back with glibc's `malloc_trim`
(`release_free_memory()`). This changes glibc's settings for the whole
process, so by default it happens only where the user asked for it
(`dss_keras.use_fast_cpu_runtime()`, which `dss-keras` calls) and TensorFlow's
CPU tensors come from a pooled allocator (BFC or oneDNN's): at the t5-v1_1-small shape the trim took 24-277 MB (159 on the mean) off
peak RSS and the mappings 16-25 MB more, at the same speed. With glibc's
`malloc` for tensors the steps were 8-12% slower after the trim (each step
faulted the heap's pages in again), so it stays off there. BENCHMARKS.md has
the figures.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import tensorflow as tf
from keras.src.backend.tensorflow.trainer import reduce_per_replica

from dss_keras.tf_fast_path.cpu_runtime import fast_cpu_runtime_asked, pooled_allocator_in_effect


M_MMAP_THRESHOLD = -3  # glibc's malloc.h
LARGE_ALLOCATION = 256 * 1024  # bytes, during the first step
STEADY_LARGE_ALLOCATION = 32 * 2**20  # after it: glibc's own threshold at its highest


@functools.cache
def _glibc_function(name: str):
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def map_large_allocations(threshold: int = LARGE_ALLOCATION) -> bool:
    """Has glibc map each allocation of `threshold` bytes or more on its own; False without glibc.

    A block so mapped goes back to the system when it is freed. glibc starts
    at 128 KiB but raises its threshold, up to 32 MiB, each time it frees a
    mapped block; larger blocks then come from its heap and, freed, stay
    resident until `release_free_memory()`. A fixed threshold keeps the large
    temporaries of tracing and optimising the first step from adding to its
    peak.

    """
    mallopt = _glibc_function("mallopt")
    return mallopt is not None and bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def release_free_memory() -> bool:
    """Returns the C heap's free pages to the system; False without glibc."""
    trim = _glibc_function("malloc_trim")
    if trim is None:
        return False
    trim(0)
    return True


def flat_train_function(model, release_memory: bool | None = None) -> Callable:
    """A Keras `train_function` for `model`: one step per call, one `tf.function`.

    Takes what Keras' fit loop passes (a `tf.data` or distributed iterator, or
    an iterable of batches from `train_on_batch`) and returns the step's logs;
    an exhausted iterator raises TensorFlow's `OutOfRangeError`, which Keras'
    epoch iterator ends the epoch on.

    Args:
        model: A compiled Keras model.
        release_memory: Map large allocations on their own during the first
            step, and hand the C heap's free pages back to the system once,
            after it (glibc's settings are the process's: see the module
            docstring). `None` (the default): when this process asked for it
            with `dss_keras.use_fast_cpu_runtime()` and TensorFlow's CPU
            tensors come from a pooled allocator, so that the steps after it
            do not fault those pages in again.

    Examples:

    >>> import keras
    >>> from dss_keras import testing
    >>> from dss_keras.data import make_dataset
    >>> from dss_keras.model import DistillStepByStep
    >>> model = DistillStepByStep(testing.tiny_seq2seq_lm(), max_label_length=4,
    ...                           max_rationale_length=16, max_input_length=48)
    >>> model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    >>> dataset, _ = make_dataset(testing.toy_records(8), model.preprocessor, batch_size=8)
    >>> logs = flat_train_function(model)(iter(dataset))
    >>> sorted(logs)
    ['label_loss', 'label_token_accuracy', 'loss', 'rationale_loss']
    """
    strategy = model.distribute_strategy

    def step(data):
        outputs = strategy.run(model.train_step, args=(data,))
        return reduce_per_replica(outputs, strategy, reduction="auto")

    step_on_iterator = tf.function(lambda iterator: step(iterator.get_next()), autograph=False)
    step_on_batch = tf.function(step, autograph=False, reduce_retracing=True)

    first_step_done = False

    def train_function(iterator):
        nonlocal first_step_done, release_memory
        if release_memory is None:
            release_memory = fast_cpu_runtime_asked() and pooled_allocator_in_effect()
        if release_memory and not first_step_done:
            map_large_allocations()
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            logs = step_on_iterator(iterator)
        else:
            logs = step_on_batch(next(iter(iterator)))
        if not first_step_done:  # what the first step's tracing freed, once
            first_step_done = True
            if release_memory:
                release_free_memory()
                map_large_allocations(STEADY_LARGE_ALLOCATION)
        return logs

    return train_function
