"""Each target token's cross-entropy, with a gradient that is one pass over the vocabulary.

`tf.nn.sparse_softmax_cross_entropy_with_logits` computes the loss and its
gradient (the probabilities less the one-hot target) in one CPU kernel, which
on a `[tokens, vocabulary]` matrix of a T5's target tokens (vocabulary 32,128)
took about three times as long as the same arithmetic as separate ops: a row
maximum, one `exp`, a row sum, and for the gradient one product and a scatter
of the targets' `-1`s (BENCHMARKS.md, "Parts of the training step").
`sparse_cross_entropy` is that arithmetic, with the exponentials kept for the
backward pass as TensorFlow keeps its probabilities.

    >>> import tensorflow as tf
    >>> logits = tf.constant([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    >>> targets = tf.constant([0, 1])
    >>> ours = sparse_cross_entropy(logits, targets)
    >>> theirs = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)
    >>> bool(tf.reduce_all(tf.abs(ours - theirs) < 1e-6))
    True
"""

from __future__ import annotations

import tensorflow as tf


def sparse_cross_entropy(logits: tf.Tensor, targets: tf.Tensor) -> tf.Tensor:
    """`-log softmax(logits)[target]` at each target token.

    Args:
        logits: A float `[..., vocabulary]` tensor.
        targets: An int `[...]` tensor of target ids.

    Returns:
        The `[...]` cross-entropies, in `logits`' dtype; differentiable in `logits`.

    Examples:

    >>> import tensorflow as tf
    >>> round(float(sparse_cross_entropy(tf.zeros([1, 4]), tf.constant([2]))[0]), 4)  # log 4
    1.3863
    """
    rows = tf.reshape(logits, [-1, tf.shape(logits)[-1]])
    losses = _cross_entropy(rows, tf.reshape(tf.cast(targets, "int32"), [-1]))
    return tf.reshape(losses, tf.shape(targets))


@tf.custom_gradient
def _cross_entropy(logits, targets):
    top = tf.reduce_max(logits, axis=-1, keepdims=True)
    exponentials = tf.exp(logits - top)
    total = tf.reduce_sum(exponentials, axis=-1, keepdims=True)
    at_target = tf.gather(logits, targets[:, None], batch_dims=1)
    losses = tf.squeeze(tf.math.log(total) + top - at_target, axis=-1)

    def gradient(upstream):
        # d loss_i / d logits_ij = softmax_ij - [j == target_i]
        scaled = exponentials * (upstream[:, None] / total)
        rows = tf.range(tf.shape(targets)[0])
        return tf.tensor_scatter_nd_sub(scaled, tf.stack([rows, targets], axis=1), upstream), None

    return losses, gradient
