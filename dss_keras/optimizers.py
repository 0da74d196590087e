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
  weight and its two moments in one fused kernel, the clipping included.

On JAX and PyTorch, `AdamW` is Keras' AdamW (no fused kernel; under
`keras.distribution` the gradients are the global batch's already, so Keras'
own `global_clipnorm` clips the right norm), and `LinearDecay` is written in
`keras.ops`: the same optimizer on every backend, and a `.keras` file saved on
one loads on another. Only TensorFlow's code imports TensorFlow.
"""

from __future__ import annotations

import keras
from keras import ops

from dss_keras.config import EPSILON_PLACEMENTS

ON_TENSORFLOW = keras.backend.backend() == "tensorflow"
"""Whether `AdamW` updates through TensorFlow's fused kernel (Keras' backend is TensorFlow)."""

if ON_TENSORFLOW:
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
        step = ops.floor_divide(ops.cast(step, "int32"), self.gradient_accumulation_steps)
        fraction = ops.cast(step, "float32") / float(self.decay_steps)
        return self.initial_learning_rate * ops.maximum(0.0, 1.0 - fraction)

    def get_config(self) -> dict:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "gradient_accumulation_steps": self.gradient_accumulation_steps,
        }


# The kernel's float32 `1 - beta` is off by up to 6e-8 in absolute terms. The smallest
# `beta` (the decay of the moments so far) and `1 - beta` (the weight of the new gradient)
# handed to it keep those errors within 6e-5 and 6e-4 of themselves; Keras' own float32
# `1 - 0.999` is 5e-5 off.
_LEAST_DECAY, _LEAST_NEW_WEIGHT = 1e-3, 1e-4


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
    There, global-norm clipping scales no gradient either: the kernel is
    handed each gradient as it is, and the clipping factor `c` of the step
    goes into the kernel's scalars. For that, the two moments are stored
    divided by scalars of their own, `a` and `b` (optimizer variables): with
    `a' = beta_1 a + (1 - beta_1) c`, the kernel's update
    `m~ += (g - m~) (1 - beta_1 a / a')` keeps `a' m~` equal to Adam's
    `beta_1 m + (1 - beta_1) c g`, and likewise `b' v~` with squares; the
    learning rate and epsilon handed to the kernel are rescaled to match.
    The weights follow Keras' AdamW with clipping to float rounding
    (`tests/test_optimizers.py`), and the step saves a read and a write of
    every gradient (1-3% of a t5-v1_1-small step on a CPU; benchmarks/HISTORY.md,
    entry 18). `first_moment(variable)` and
    `second_moment(variable)` give Adam's moments.

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
    >>> [round(float(m), 4) for m in optimizer.first_moment(variable)]  # 0.1 * (0.6, 0.8)
    [0.06, 0.08]
    """

    _pending_clip_factor = None  # set by `_clip_gradients`, used by `_backend_update_step`

    def __init__(self, *args, epsilon_placement: str = "keras", **kwargs):
        """Keras' `AdamW` arguments, and where epsilon is added.

        Args:
            epsilon_placement: `"keras"` adds epsilon to `sqrt(v)` before the
                bias correction, as Keras' Adam does; `"pytorch"` after it, as
                PyTorch's AdamW (the authors' optimizer) does: the same update
                with `epsilon * sqrt(1 - beta_2 ** t)` at step `t`, which is up
                to 32 times smaller in the first steps.
        """
        if epsilon_placement not in EPSILON_PLACEMENTS:
            raise ValueError(f"epsilon_placement must be one of {EPSILON_PLACEMENTS}. "
                             f"Received: epsilon_placement={epsilon_placement!r}")
        super().__init__(*args, **kwargs)
        self.epsilon_placement = epsilon_placement

    def get_config(self) -> dict:
        return {**super().get_config(), "epsilon_placement": self.epsilon_placement}

    def _epsilon_factor(self, dtype):
        """What the step's epsilon is multiplied by: 1, or PyTorch's `sqrt(1 - beta_2 ** t)`."""
        if self.epsilon_placement == "keras":
            return ops.ones((), dtype)
        step = ops.cast(self.iterations + 1, dtype)
        return ops.sqrt(1.0 - ops.power(ops.cast(self.beta_2, dtype), step))

    def update_step(self, gradient, variable, learning_rate):
        if self.epsilon_placement == "keras":
            return super().update_step(gradient, variable, learning_rate)
        epsilon = self.epsilon  # Keras' step reads `self.epsilon`: this step's, for one call
        self.epsilon = epsilon * self._epsilon_factor(variable.dtype)
        try:
            return super().update_step(gradient, variable, learning_rate)
        finally:
            self.epsilon = epsilon

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        if not ON_TENSORFLOW:  # Keras' AdamW
            return
        # The scales of the stored moments (see the class docstring); float64, so that
        # the square of a tiny clipping factor does not round to 0.
        self._moment_scales = self.add_variable((2,), "zeros", dtype="float64",
                                                name="moment_scales")

    def apply(self, grads, trainable_variables=None):
        if ON_TENSORFLOW:
            grads = [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
                     for g in grads]
        return super().apply(grads, trainable_variables)

    def first_moment(self, variable):
        """Adam's first moment of `variable` (its stored moment times its scale)."""
        index = self._get_variable_index(variable)
        return self._momentums[index] * self._stored_scale(variable, 0)

    def second_moment(self, variable):
        """Adam's second moment of `variable` (its stored moment times its scale)."""
        index = self._get_variable_index(variable)
        return self._velocities[index] * self._stored_scale(variable, 1)

    def _stored_scale(self, variable, which: int):
        if not self._fuses(variable):
            return ops.ones((), variable.dtype)
        return tf.cast(self._moment_scales[which], variable.dtype)

    def _apply_weight_decay(self, variables):
        if self.weight_decay:
            super()._apply_weight_decay([v for v in variables if not self._fuses(v)])

    def _fuses(self, variable) -> bool:
        """Whether the fused kernel updates `variable` (and decays it) itself."""
        return ON_TENSORFLOW and not (self.amsgrad or tf.distribute.has_strategy()
                                      or not hasattr(variable, "handle"))

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        clip_factor, self._pending_clip_factor = self._pending_clip_factor, None
        fused = [self._fuses(v) for v in trainable_variables]
        if clip_factor is not None:  # applied here to the gradients no kernel updates
            grads = [g if fuses else g * tf.cast(clip_factor, g.dtype)
                     for g, fuses in zip(grads, fused)]
        if not any(fused):
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        scalars = self._kernel_scalars(clip_factor, learning_rate, trainable_variables)
        for gradient, variable, fuses in zip(grads, trainable_variables, fused):
            if fuses:
                self._fused_update(gradient, variable, learning_rate, scalars)
            else:
                self.update_step(gradient, variable, learning_rate)

    def _kernel_scalars(self, clip_factor, learning_rate, updated) -> dict:
        """`ResourceApplyAdam`'s scalars for gradients scaled by `clip_factor`.

        Advances the moments' scales `a` and `b` by one step (in float64) and
        returns the kernel's `beta1`, `beta2`, `lr` and `epsilon` for the
        stored moments. The kernel computes `1 - beta` from `beta` in float32,
        so a `beta` near 0 or 1 loses digits of one of the two: when a
        clipping factor far from the recent ones would give one, the stored
        moments are first rescaled (one pass over them) so that `a = c` and
        `b = c**2`, which gives Adam's own betas. The stored moments of
        weights that get no update this step are rescaled so that Adam's
        moments stay as they were.
        """
        factor = tf.constant(1.0, "float64") if clip_factor is None else tf.cast(
            clip_factor, "float64")
        betas = tf.constant([float(self.beta_1), float(self.beta_2)], "float64")
        alone = tf.stack([factor, factor * factor])  # the scales of one step of this factor
        before = tf.identity(self._moment_scales.value)

        def rescaled_to_alone():
            self._rescale_moments(self._trainable_variables, before / alone)
            return alone

        kept = betas * before / (betas * before + (1.0 - betas) * alone)
        lossy = (before > 0) & ((kept < _LEAST_DECAY) | (kept > 1.0 - _LEAST_NEW_WEIGHT))
        before = tf.cond(tf.reduce_any(lossy), rescaled_to_alone, lambda: before)
        after = betas * before + (1.0 - betas) * alone
        updated = {self._get_variable_index(v) for v in updated}
        self._rescale_moments([v for v in self._trainable_variables
                               if self._get_variable_index(v) not in updated], before / after)
        self._moment_scales.assign(after)
        step = tf.cast(self.iterations + 1, "float64")
        bias_correction = (tf.sqrt(1.0 - tf.pow(betas[1], step))
                           / (1.0 - tf.pow(betas[0], step)))
        root = tf.sqrt(after[1])
        return {"beta1": betas[0] * before[0] / after[0],
                "beta2": betas[1] * before[1] / after[1],
                "lr": tf.cast(learning_rate, "float64") * bias_correction * after[0] / root,
                "epsilon": float(self.epsilon) * self._epsilon_factor("float64") / root}

    def _rescale_moments(self, variables, ratios):
        """Multiplies the stored moments of `variables` by `ratios` (first, second)."""
        for variable in variables:
            if self._fuses(variable):
                index = self._get_variable_index(variable)
                for moments, ratio in zip((self._momentums, self._velocities), tf.unstack(ratios)):
                    moments[index].assign(moments[index] * tf.cast(ratio, moments[index].dtype))

    def _fused_update(self, gradient, variable, learning_rate, scalars: dict):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        if self.weight_decay and self._use_weight_decay(variable):
            weight = variable.value if isinstance(variable, keras.Variable) else variable
            with tf.control_dependencies([gradient]):  # in place: AssignSubVariableOp
                weight.assign_sub(weight * tf.cast(self.weight_decay, dtype)
                                  * tf.cast(learning_rate, dtype))
        zero = tf.constant(0.0, dtype)  # the bias correction is in `lr`
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].value.handle,
            v=self._velocities[index].value.handle,
            beta1_power=zero, beta2_power=zero,
            grad=tf.cast(gradient, dtype),
            **{name: tf.cast(value, dtype) for name, value in scalars.items()},
        )

    def _clip_gradients(self, grads):
        if not ON_TENSORFLOW:
            return super()._clip_gradients(grads)
        context = tf.distribute.get_replica_context()
        replicas = context.num_replicas_in_sync if context is not None else 1
        if not (self.global_clipnorm and self.global_clipnorm > 0):
            return super()._clip_gradients(grads)
        if replicas == 1:
            # Applied by `_backend_update_step`, in the kernels' scalars.
            self._pending_clip_factor = clip_factor(grads, self.global_clipnorm)
            return grads
        present = [g for g in grads if g is not None]
        summed = context.all_reduce(tf.distribute.ReduceOp.SUM, present)
        clipped, _ = tf.clip_by_global_norm(summed, self.global_clipnorm)
        shares = iter([g / replicas for g in clipped])
        return [None if g is None else next(shares) for g in grads]


def clip_factor(grads: list, clip_norm: float) -> tf.Tensor:
    """What global-norm clipping multiplies `grads` by: `min(1, clip_norm / norm)`.

    The norm comes from `tf.nn.l2_loss` (one read of each gradient, where
    Keras squares it into a temporary first). A norm that is not finite gives
    NaN, which makes the update NaN as Keras' clipping does.

    >>> round(float(clip_factor([tf.constant([3.0, 0.0]), None, tf.constant([4.0])], 1.0)), 4)
    0.2
    """
    present = [g for g in grads if g is not None]
    norm = tf.sqrt(2.0 * tf.add_n([tf.nn.l2_loss(tf.cast(g, "float32")) for g in present]))
    return clip_norm * tf.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
