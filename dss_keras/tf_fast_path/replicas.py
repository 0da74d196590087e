"""Sums over the replicas of a `tf.distribute` strategy, for the fast path's loss and metrics.

The token means of `dss_keras.objective` divide by a count over the global
batch; under a strategy each replica holds a share of it, and these helpers
add the shares up. Outside a strategy (or with one replica) they change
nothing.

Examples:

>>> import tensorflow as tf
>>> float(all_reduce_sum(tf.constant(3.0)))
3.0
>>> across_workers()
False
"""

from __future__ import annotations

import tensorflow as tf


def all_reduce_sum(value):
    """Sums `value` over the replicas of the current strategy (identity without one)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def across_workers() -> bool:
    """Whether the current strategy spans several workers (Keras' own test of it)."""
    strategy = tf.distribute.get_strategy()
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())
