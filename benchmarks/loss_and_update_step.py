"""Time of the step's two whole-vocabulary and whole-model passes, each against its plain form.

At the t5-v1_1-small shape of `train_throughput.py`:

- the token cross-entropy and its gradient over the step's projected target
  tokens (`--tokens`, 272: about 258 real ones rounded up to 16) and the
  vocabulary of 32,128: TensorFlow's fused `SparseSoftmaxCrossEntropyWithLogits`
  against `dss_keras.tf_fast_path.token_cross_entropy`;
- the optimizer's update of the model's 77M weights with gradients clipped to
  global norm 1.0 (their norm is above it): every gradient multiplied by the
  clipping factor before `ResourceApplyAdam` (the update before) against
  `dss_keras.optimizers.AdamW`, which hands the factor to the kernel's scalars.

Each side runs in one `tf.function`; sides alternate, and the best of
`--repeats` timings of 20 calls is printed.

    python benchmarks/loss_and_update_step.py
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime  # light: imports no TensorFlow

use_fast_cpu_runtime()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=272, help="projected target tokens a step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def cross_entropy_steps(tokens: int, vocabulary: int) -> dict:
    """Both sides' loss-and-gradient steps on the same logits and targets."""
    import tensorflow as tf

    from dss_keras.tf_fast_path.token_cross_entropy import sparse_cross_entropy

    logits = tf.random.stateless_normal([tokens, vocabulary], [0, 1]) * 3.0
    targets = tf.random.stateless_uniform([tokens], [0, 2], 0, vocabulary, "int32")
    weights = tf.random.stateless_uniform([tokens], [0, 3])

    def step_of(cross_entropy):
        @tf.function
        def step(logits, targets, weights, seed_state):
            with tf.GradientTape() as tape:
                tape.watch(logits)
                loss = tf.reduce_sum(cross_entropy(logits, targets) * weights)
            return [tape.gradient(loss, logits)]

        return step, (logits, targets, weights)

    def tensorflow_op(logits, targets):
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)

    return {"TensorFlow's fused op": step_of(tensorflow_op),
            "dss-keras": step_of(sparse_cross_entropy)}


def update_steps(shape: dict | None = None) -> dict:
    """Both optimizers' update of a T5's weights (t5-v1_1-small), on the same gradients.

    Each side updates its own copy of the weights, from the same start.
    """
    import keras_hub
    import tensorflow as tf
    from train_throughput import SHAPE

    from dss_keras import optimizers

    backbone = keras_hub.models.T5Backbone(  # the shapes matter here, not the activation
        **{k: v for k, v in (shape or SHAPE).items() if k != "dropout"}, dropout=0.0,
        activation="gelu", use_gated_activation=True, tie_embedding_weights=False)
    starts = [w.numpy() for w in backbone.trainable_variables]
    gradients = [tf.random.stateless_normal(w.shape, [index, 4]) * 1e-3
                 for index, w in enumerate(starts)]  # t5-v1_1-small: global norm about 8.8

    class ScaledGradients(optimizers.AdamW):
        def _clip_gradients(self, grads):
            factor = optimizers.clip_factor(grads, self.global_clipnorm)
            return [g * tf.cast(factor, g.dtype) for g in grads]

    steps = {}
    for side, optimizer_class in [("gradients scaled first", ScaledGradients),
                                  ("dss-keras", optimizers.AdamW)]:
        weights = [tf.Variable(start) for start in starts]
        optimizer = optimizer_class(learning_rate=5e-5, epsilon=1e-8, global_clipnorm=1.0)
        optimizer.build(weights)

        @tf.function
        def step(gradients, seed_state, optimizer=optimizer, weights=weights):
            optimizer.apply(gradients, weights)
            return weights

        steps[side] = (step, (gradients,))
    return steps


def main(argv=None) -> None:
    args = parse_args(argv)
    from attention_step import best_times, set_threads

    set_threads(args.threads)
    cases = [(f"cross-entropy and gradient, {args.tokens} x 32128",
              cross_entropy_steps(args.tokens, 32128)),
             ("AdamW update of 77M weights, clipped", update_steps())]
    print(f"{args.threads} threads, best of {args.repeats} x 20 calls")
    for case, steps in cases:
        times = best_times(steps, args.repeats)
        plain, ours = times.values()
        names = list(times)
        print(f"{case}: {names[0]} {plain * 1e3:.2f} ms, {names[1]} {ours * 1e3:.2f} ms "
              f"({plain / ours:.2f}x)")


if __name__ == "__main__":
    main()
