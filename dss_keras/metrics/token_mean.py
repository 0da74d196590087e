"""`TokenMean`: the Keras metric behind the token-mean losses and accuracies (any backend)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="dss_keras")
class TokenMean(keras.metrics.Metric):
    """A mean over tokens: accumulates a sum and a token count, divides once.

    Under a `tf.distribute` strategy both accumulators are summed over the
    replicas when read, so the result is the mean over all tokens of all
    replicas, not a mean of per-replica means. Before any token is counted
    the result is NaN.

    Examples:

    >>> metric = TokenMean()
    >>> metric.update_state(3.0, 2.0)
    >>> metric.update_state(1.0, 2.0)
    >>> float(metric.result())
    1.0
    """

    def __init__(self, name: str = "token_mean", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.total = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="total")
        self.count = self.add_variable(shape=(), initializer="zeros", dtype="float32", name="count")

    def update_state(self, total, count):
        self.total.assign_add(ops.cast(total, "float32"))
        self.count.assign_add(ops.cast(count, "float32"))

    def result(self):
        # No token seen (e.g. no rationale in the data): NaN, not a fake 0.0.
        return ops.where(self.count > 0, ops.divide_no_nan(self.total, self.count),
                         float("nan"))

    def reset_state(self):
        self.total.assign(0.0)
        self.count.assign(0.0)
