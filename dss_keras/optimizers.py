"""The optimizer of the authors' runs: AdamW, linear decay, global-norm clipping.

The reference code trains with the Hugging Face Trainer's defaults: AdamW
(betas 0.9 and 0.999, epsilon 1e-8, weight decay 0), a learning rate that
decays linearly from its peak to 0 over the run with no warm-up, and the
gradient clipped to global norm 1.0. `dss_keras.training.make_optimizer`
builds it from a `TrainConfig`; this module holds the two pieces Keras lacks:

- `LinearDecay`: `lr * (1 - t / decay_steps)` at optimizer step `t`
  (0-based), counting optimizer steps even with gradient accumulation;
- `AdamW`: Keras' AdamW with dense gradients, whose `global_clipnorm` clips
  the gradient of the global batch under a `tf.distribute` strategy (Keras
  clips each replica's share before summing them), and which updates each
  weight and its two moments in one fused kernel.
"""

from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="dss_keras")
class LinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that falls linearly from `initial_learning_rate` to 0.

    At optimizer step `t` (0 for the first update) the rate is
    `initial_learning_rate * max(0, 1 - t / decay_steps)`, as the Hugging Face
    Trainer's linear schedule without warm-up gives it. Keras calls a schedule
    with the count of `apply` calls, which with gradient accumulation counts
    batches; `gradient_accumulation_steps` turns that count back into
    optimizer steps.

    Args:
        initial_learning_rate: The rate of the first step.
        decay_steps: Optimizer steps until the rate is 0.
        gradient_accumulation_steps: Batches per optimizer step.

    Examples:

    >>> schedule = LinearDecay(1e-3, decay_steps=10)
    >>> [round(float(schedule(step)), 6) for step in (0, 5, 9, 10)]
    [0.001, 0.0005, 0.0001, 0.0]
    >>> accumulated = LinearDecay(1e-3, decay_steps=10, gradient_accumulation_steps=4)
    >>> float(accumulated(4 * 5 + 3)) == float(schedule(5))  # the 4th batch of step 5
    True
    """

    def __init__(self, initial_learning_rate: float, decay_steps: int,
                 gradient_accumulation_steps: int = 1):
        if decay_steps < 1 or gradient_accumulation_steps < 1:
            raise ValueError(
                "`decay_steps` and `gradient_accumulation_steps` must be at least 1. Received: "
                f"decay_steps={decay_steps}, "
                f"gradient_accumulation_steps={gradient_accumulation_steps}")
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_steps = int(decay_steps)
        self.gradient_accumulation_steps = int(gradient_accumulation_steps)

    def __call__(self, step):
        step = tf.cast(step, "int64") // self.gradient_accumulation_steps
        fraction = tf.cast(step, "float32") / float(self.decay_steps)
        return self.initial_learning_rate * tf.maximum(0.0, 1.0 - fraction)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


@keras.saving.register_keras_serializable(package="dss_keras")
class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW: dense gradients, `global_clipnorm` on the global batch's gradient.

    Sparse gradients (`tf.IndexedSlices`, e.g. of a T5's relative position
    buckets, looked up many times per batch) are summed into dense ones
    first. Keras' Adam squares the slices of a sparse gradient one by one, so
    its second moment of a row looked up several times is the sum of the
    squared pieces rather than the square of their sum: not Adam, and
    different for each way of splitting the batch (one device or several
    replicas). PyTorch's embeddings, which the authors trained with, give
    dense gradients too.

    Keras clips the gradients a replica computed before the replicas' sum, so
    with two or more replicas each share is clipped by its own norm. Here,
    when clipping is on and there are several replicas, the gradients are
    summed over the replicas first, clipped by the norm of the sum, and
    handed on divided by the number of replicas (Keras sums them again).
    Without clipping or without replicas it is Keras' AdamW.

    Outside a `tf.distribute` strategy each update is TensorFlow's fused
    `ResourceApplyAdam` kernel, which computes Keras' Adam update (the same
    formula, bias correction and epsilon) in one pass over the weight and its
    moments, in place, instead of a handful of whole-tensor temporaries.

    Weight decay 0 (the authors' setting) is no work at all; Keras still
    subtracts `0 * lr * weight` from every weight each step. Any other weight
    decay is applied as Keras does (before the Adam update, with the step's
    learning rate), but only once the weight's gradient is known. Keras'
    decay reads no gradient, so inside a traced train step TensorFlow runs it
    while the forward pass still holds the weights it read, and each weight
    is copied rather than updated in place: a second copy of the model for
    the whole step.

    Examples:

    >>> optimizer = AdamW(learning_rate=0.1, global_clipnorm=1.0)
    >>> variable = keras.Variable([0.0, 0.0])
    >>> optimizer.apply([tf.constant([30.0, 40.0])], [variable])  # norm 50, clipped to 1
    >>> [round(float(v), 4) for v in variable.numpy()]  # the first step moves each by lr
    [-0.1, -0.1]
    """

    def apply(self, grads, trainable_variables=None):
        grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                 for g in grads]
        return super().apply(grads, trainable_variables)

    def _apply_weight_decay(self, variables):
        if self.weight_decay:
            super()._apply_weight_decay([v for v in variables if not self._fuses(v)])

    def _fuses(self, variable) -> bool:
        """Whether `update_step` updates `variable` (and decays it) itself."""
        return not (self.amsgrad or tf.distribute.has_strategy()
                    or not hasattr(variable, "handle"))

    def update_step(self, gradient, variable, learning_rate):
        if not self._fuses(variable):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)

        def constant(value):
            return tf.cast(value, dtype)

        if self.weight_decay and self._use_weight_decay(variable):
            with tf.control_dependencies([gradient]):
                variable.assign_sub(variable * constant(self.weight_decay)
                                    * constant(learning_rate))
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=tf.pow(constant(self.beta_1), step),
            beta2_power=tf.pow(constant(self.beta_2), step),
            lr=constant(learning_rate),
            beta1=constant(self.beta_1),
            beta2=constant(self.beta_2),
            epsilon=constant(self.epsilon),
            grad=tf.cast(gradient, dtype),
        )

    def _clip_gradients(self, grads):
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        if replicas == 1:
            return _clip_by_global_norm(grads, self.global_clipnorm)
        present = [g for g in grads if g is not None]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
        clipped, _ = tf.clip_by_global_norm(summed, self.global_clipnorm)
        shares = iter([g / replicas for g in clipped])
        return [None if g is None else next(shares) for g in grads]


def _clip_by_global_norm(grads: list, clip_norm: float) -> list:
    """Keras' `clip_by_global_norm`, in fewer passes over the gradients.

    The norm comes from `tf.nn.l2_loss` (one read of each gradient, where
    Keras squares it into a temporary first), and the gradients are scaled
    only when the norm exceeds `clip_norm` (or is not finite, which makes
    them NaN as in Keras).
    """
    present = [g for g in grads if g is not None]
    norm = tf.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, "float32")) for g in present]))
    scale = clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    scaled = tf.cond(norm <= clip_norm, lambda: list(present),
                     lambda: [g * tf.cast(scale, g.dtype) for g in present])
    scaled = iter(scaled)
    return [None if g is None else next(scaled) for g in grads]
