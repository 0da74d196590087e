"""T5's feed-forward block, keeping its input and its two projections for the gradient.

A T5 layer ends with `x + dropout(wo(dropout(act(n(x) wi_0) * n(x) wi_1)))`,
`n` its RMS norm (v1.1 and FLAN gate the activation with `n(x) wi_1`; the
original T5 has no gate). Differentiated op by op, the block keeps for the
backward pass `n(x)` (the input of both projections), the activation's input
`n(x) wi_0`, both factors of the product and the dropped-out product (the
input of `wo`): four tensors of the inner width and one of the model's,
besides `x` for the norm.
`feed_forward` keeps `x`, `n(x) wi_0`, `n(x) wi_1` and the dropout's boolean
mask, and computes the norm, the activation, the product and its dropout
again in the backward pass: elementwise work, no matrix product more. At the
t5-v1_1-small shape of `benchmarks/train_throughput.py` that is about 100 MB
less kept for the backward pass and 87 MB less at the tensors' peak, at the
same speed (BENCHMARKS.md).

`dss_keras.tf_fast_path.lean_t5.T5LayerRecomputingFeedForward` is KerasHub's T5 layer
computing its block so in training.

Examples:

>>> import numpy as np, tensorflow as tf
>>> from dss_keras.tf_fast_path.lean_t5 import rms_norm
>>> rng = np.random.default_rng(0)
>>> x = tf.constant(rng.normal(size=(2, 3, 4)), "float32")
>>> kernels = [tf.constant(rng.normal(size=shape), "float32")
...            for shape in [(4, 8), (4, 8), (8, 4)]]
>>> def normalize(x, weight):
...     return rms_norm(x, weight, 1e-6)
>>> y = feed_forward(x, tf.ones(4), *kernels, normalize=normalize, activation=tf.nn.relu)
>>> normed = normalize(x, tf.ones(4))
>>> op_by_op = (tf.nn.relu(normed @ kernels[0]) * (normed @ kernels[1])) @ kernels[2]
>>> bool(np.allclose(y, op_by_op, atol=1e-5)), y.shape
(True, TensorShape([2, 3, 4]))
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf


def feed_forward(x, norm_weight, input_kernel, gate_kernel, output_kernel, *,
                 normalize: Callable, activation: Callable, keep=None, rate: float = 0.0):
    """`dropout(activation(n(x) input_kernel) * n(x) gate_kernel) output_kernel`, `n = normalize`.

    The gradient keeps `x`, the two projections and `keep`, and computes the
    rest again from them once the upstream gradient arrives.

    Args:
        x: `[..., width]`, the block's input (before its norm).
        norm_weight: The norm's scale, `[width]`, in `x`'s dtype.
        input_kernel: `[width, inner]`, the projection that goes through `activation`.
        gate_kernel: `[width, inner]`, the projection that gates it, or `None` (no gate).
        output_kernel: `[inner, width]`.
        normalize: `normalize(x, norm_weight)`, differentiable.
        activation: An elementwise, differentiable function.
        keep: Optional boolean dropout mask, `[..., inner]`.
        rate: The dropout rate that drew `keep`; kept values are scaled by `1 / (1 - rate)`.

    Returns:
        `[..., width]`, before the block's residual connection.
    """
    kernels = [input_kernel, output_kernel] if gate_kernel is None else [
        input_kernel, output_kernel, gate_kernel]

    def dropped(tensor):  # as Keras' `Dropout` on TensorFlow: scaled, then masked
        if keep is None:
            return tensor
        scaled = tensor * tf.constant(1.0 / (1.0 - rate), tensor.dtype)
        return tf.where(keep, scaled, tf.zeros((), tensor.dtype))

    def hidden(pre_activation, gate=None):
        activated = activation(pre_activation)
        return dropped(activated if gate is None else activated * gate)

    def kernel_gradient(inputs, gradient):  # over all tokens: one [width, tokens] product
        def rows(tensor):
            return tf.reshape(tensor, [-1, tf.shape(tensor)[-1]])

        return tf.matmul(rows(inputs), rows(gradient), transpose_a=True)

    # The products keep `x`'s rank, as a Keras `Dense` does: TensorFlow's 2-D `MatMul` ran
    # `[tokens, inner] x [inner, width]` about a third slower than the batched one here.
    @tf.custom_gradient
    def block(x, norm_weight, input_kernel, output_kernel, *gate_kernel):
        normed = normalize(x, norm_weight)
        # The activation's input, then the gate if any: what the gradient keeps.
        projections = [tf.matmul(normed, kernel) for kernel in [input_kernel, *gate_kernel]]
        output = tf.matmul(hidden(*projections), output_kernel)

        def gradient(upstream):
            # Nothing else orders the recomputation after `upstream`: see `lean_t5.attend`.
            with tf.control_dependencies([upstream]):
                x_now = tf.identity(x)
                kept = [tf.identity(projection) for projection in projections]
            with tf.GradientTape() as tape:
                tape.watch(kept)
                hidden_now = hidden(*kept)
            output_kernel_gradient = kernel_gradient(hidden_now, upstream)
            hidden_gradient = tf.matmul(upstream, output_kernel, transpose_b=True)
            kept_gradients = tape.gradient(hidden_now, kept, output_gradients=hidden_gradient)
            with tf.GradientTape() as tape:
                tape.watch([x_now, norm_weight])
                normed_now = normalize(x_now, norm_weight)
            in_kernels = [input_kernel, *gate_kernel]
            normed_gradient = tf.add_n([tf.matmul(g, kernel, transpose_b=True)
                                        for g, kernel in zip(kept_gradients, in_kernels)])
            x_gradient, weight_gradient = tape.gradient(
                normed_now, [x_now, norm_weight], output_gradients=normed_gradient)
            in_kernel_gradients = [kernel_gradient(normed_now, g) for g in kept_gradients]
            return (x_gradient, weight_gradient, in_kernel_gradients[0],
                    output_kernel_gradient, *in_kernel_gradients[1:])

        return output, gradient

    return block(x, norm_weight, *kernels)
