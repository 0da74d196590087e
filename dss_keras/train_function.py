"""One flat `tf.function` per training step; the heap handed back after the first.

Keras' TensorFlow trainer wraps the step in two nested `tf.function`s (one per
batch inside one per iterator call). TensorFlow then keeps the traced step
twice, as the inner function and inlined into the outer one: about 175 MB at
the t5-v1_1-small shape. `flat_train_function` traces the step once, inside a
single function that reads the batch from the iterator itself.

The first call also traces the step and lets TensorFlow optimise the graph;
glibc keeps the memory those temporaries free in its heap. After the first
step, `release_memory` hands it back with glibc's `malloc_trim`
(`release_free_memory()`). By default this happens when TensorFlow's CPU
tensors come from a pooled allocator (BFC or oneDNN's, as `dss-keras` sets
up): at the t5-v1_1-small shape peak RSS fell by 24-277 MB (159 on the mean)
at the same speed. With glibc's `malloc` for tensors the steps were 8-12% slower after the
trim (each step faulted the heap's pages in again), so it stays off there.
BENCHMARKS.md has the figures.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Callable

import tensorflow as tf
from keras.src.backend.tensorflow.trainer import reduce_per_replica

from dss_keras.cpu_runtime import pooled_allocator_in_effect


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return None


def release_free_memory() -> bool:
    """Returns the C heap's free pages to the system; False without glibc.

    Examples:

    >>> release_free_memory() in (True, False)
    True
    """
    trim = _malloc_trim()
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
        release_memory: Hand the C heap's free pages back to the system once,
            after the first step. `None` (the default): when TensorFlow's CPU
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
        if isinstance(iterator, (tf.data.Iterator, tf.distribute.DistributedIterator)):
            logs = step_on_iterator(iterator)
        else:
            logs = step_on_batch(next(iter(iterator)))
        if not first_step_done:  # what the first step's tracing freed, once
            first_step_done = True
            if release_memory is None:
                release_memory = pooled_allocator_in_effect()
            if release_memory:
                release_free_memory()
        return logs

    return train_function
