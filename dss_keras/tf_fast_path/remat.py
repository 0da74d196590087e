"""Rematerialisation: recompute a layer in the backward pass instead of storing it.

`call_rematerialized(layer, call, tensors)` runs `call(*tensors)` (a call of
`layer`) so that none of its intermediate activations are kept for the
backward pass: the gradient recomputes them from `tensors`, one layer at a
time. Peak memory then holds each layer's inputs, not its activations, for
about a third more compute (each layer runs forward twice).

A recomputation must draw the dropout masks of the first run. Keras' own
`keras.remat` does not: on TensorFlow its layers' `SeedGenerator`s have moved
on by the time the gradient runs, so the recomputed masks, and the gradients,
would be those of other masks. Here the layer's `Dropout` sublayers draw from
one base seed taken once per forward pass (from the layer's own first
`Dropout` generator, so no new state is added to the model); the k-th mask
of the layer comes from `stateless_fold_in(base, k)`, in the first run and
in the recomputation alike.

Examples:

>>> import numpy as np, tensorflow as tf
>>> dense = keras.layers.Dense(4)
>>> x = tf.constant(np.ones((2, 3), "float32"))
>>> with tf.GradientTape() as tape:
...     y = call_rematerialized(dense, lambda x: dense(x), (x,))
...     loss = tf.reduce_sum(y ** 2)
>>> [g.shape for g in tape.gradient(loss, dense.trainable_variables)]
[TensorShape([3, 4]), TensorShape([4])]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf


class ReplayedSeeds(keras.random.SeedGenerator):
    """Dropout seeds derived from one base seed: the k-th is `fold_in(base, k)`.

    Stateless (no variable), so the same base gives the same seeds, and so
    the same masks, each time a layer is run with it.
    """

    def __init__(self, base_seed):  # no SeedGenerator.__init__: no state variable
        self.base_seed = base_seed
        self.draws = 0

    def next(self, ordered: bool = True):
        self.draws += 1
        return tf.random.experimental.stateless_fold_in(self.base_seed, self.draws)


def active_dropouts(layer: keras.layers.Layer) -> list[keras.layers.Dropout]:
    """The `Dropout` layers inside `layer` (itself included) with a non-zero rate."""
    return [sub for sub in layer._flatten_layers(include_self=True)
            if isinstance(sub, keras.layers.Dropout) and sub.rate > 0]


def call_rematerialized(layer: keras.layers.Layer, call: Callable, tensors: Sequence):
    """`call(*tensors)`, recomputed in the backward pass with the same dropout masks.

    Args:
        layer: The layer that `call` runs; its `Dropout` sublayers are replayed.
        call: A function of `tensors` calling `layer`; anything else it needs
            (masks, flags) it closes over. Gradients flow to `tensors` and to
            the variables it reads.
        tensors: The float tensors that gradients flow back to.

    Returns:
        What `call` returns.
    """
    dropouts = active_dropouts(layer)
    if not dropouts:
        return tf.recompute_grad(call)(*tensors)
    base_seed = tf.cast(dropouts[0].seed_generator.next(), "int64")

    def replayed(*args):
        seeds = ReplayedSeeds(base_seed)
        own = [dropout.seed_generator for dropout in dropouts]
        try:
            for dropout in dropouts:  # untracked swap: the layer's state is untouched
                object.__setattr__(dropout, "seed_generator", seeds)
            return call(*args)
        finally:
            for dropout, generator in zip(dropouts, own):
                object.__setattr__(dropout, "seed_generator", generator)

    return tf.recompute_grad(replayed)(*tensors)
