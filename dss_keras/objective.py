"""The objective of distilling step-by-step, once, in `keras.ops`: every backend trains it.

Each task's loss is the mean cross-entropy over the non-padding target tokens
of that task in the (global) batch, and training minimises

    alpha * label_loss + (1 - alpha) * rationale_loss

(the label loss alone in `"standard"` mode). `DistillStepByStep.compute_loss`
computes it from the logits of each task with these functions, so Keras' own
`train_step` trains it on JAX, PyTorch and TensorFlow; the TensorFlow fast path
(`dss_keras.tf_fast_path`) computes the token losses its own way and reduces
them here too (`tests/tf_fast_path/test_fast_loss.py` proves the two equal).

A task's statistics are `(token_loss_sum, token_count, correct_tokens,
examples)`: sums over the tokens (or rows) a device holds. The loss divides
each task's sum by its token count over the global batch; under
`tf.distribute` that count is summed over the replicas (`sum_over_replicas`),
so that summing the replicas' gradients gives the gradient of the global token
mean. Under JAX's `keras.distribution` the arrays are global and nothing needs
summing.

This module imports no TensorFlow.

Examples:

>>> import numpy as np
>>> logits = np.log(np.array([[[0.5, 0.25, 0.25], [0.25, 0.5, 0.25]]], "float32"))
>>> targets, weights = np.array([[0, 2]]), np.array([[1.0, 1.0]], "float32")
>>> losses, correct = token_losses(logits, targets)
>>> [round(float(v), 4) for v in np.ravel(losses)], np.ravel(correct).tolist()
([0.6931, 1.3863], [1.0, 0.0])
>>> statistics = {"label": task_statistics(losses, correct, weights),
...               "rationale": task_statistics(losses, correct, weights * [[1.0, 0.0]])}
>>> round(float(total_loss(statistics, "distill_step_by_step", alpha=0.5)), 4)
0.8664
"""

from __future__ import annotations

from collections.abc import Callable

from keras import ops

from dss_keras.config import tasks_of


def token_losses(logits, targets):
    """Each target token's cross-entropy, and 1.0 where the argmax is the target.

    Computed in float32 whatever the logits' dtype, as `logsumexp(logits) -
    logits[target]`: no one-hot tensor the size of the logits.

    Args:
        logits: `[..., vocabulary]` logits.
        targets: Integer target ids, shaped like `logits` without its last axis.

    Returns:
        `(losses, correct)`, two float32 tensors shaped like `targets`.
    """
    logits = ops.cast(logits, "float32")
    targets = ops.cast(targets, "int32")
    target_logits = ops.take_along_axis(logits, ops.expand_dims(targets, -1), axis=-1)
    losses = ops.logsumexp(logits, axis=-1) - ops.squeeze(target_logits, -1)
    correct = ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=-1), "int32"), targets),
                       "float32")
    return losses, correct


def task_statistics(losses, correct, weights, examples=None) -> tuple:
    """One task's `(token_loss_sum, token_count, correct_tokens, examples)`.

    Args:
        losses, correct: Per-token values (`token_losses`).
        weights: Per-token weights: 1 on real target tokens, 0 on padding.
        examples: The task's number of rows; by default the first dimension of
            `weights` (the fast path, whose tokens are gathered, passes it).
    """
    weights = ops.cast(weights, "float32")
    if examples is None:
        examples = ops.shape(weights)[0]
    return (ops.sum(losses * weights), ops.sum(weights), ops.sum(correct * weights), examples)


def task_weights(mode: str, alpha: float) -> dict[str, float]:
    """Each trained task's weight in the loss.

    Examples:

    >>> task_weights("distill_step_by_step", 0.3)
    {'label': 0.3, 'rationale': 0.7}
    >>> task_weights("standard", 0.3)
    {'label': 1.0}
    """
    if mode == "standard":
        return {task: 1.0 for task in tasks_of(mode)}
    return {"label": float(alpha), "rationale": 1.0 - float(alpha)}


def _unchanged(value):
    return value


def total_loss(statistics: dict, mode: str, alpha: float,
               sum_over_replicas: Callable = _unchanged):
    """`alpha * label_loss + (1 - alpha) * rationale_loss` (the label loss in standard mode).

    Args:
        statistics: Per task, `task_statistics` of this device's share.
        mode: `"distill_step_by_step"` or `"standard"`.
        alpha: Weight of the label loss.
        sum_over_replicas: Sums a value over the replicas of a
            `tf.distribute` strategy (the identity elsewhere).

    Returns:
        This device's share of the loss: each task's token-loss sum divided by
        its token count over the global batch (0 for a task without tokens).
    """
    loss = 0.0
    for task, weight in task_weights(mode, alpha).items():
        total, count = statistics[task][:2]
        loss += weight * ops.divide_no_nan(total, sum_over_replicas(count))
    return loss
