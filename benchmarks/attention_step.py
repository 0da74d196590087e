"""Time of one T5 attention layer's training call and gradient: KerasHub's against dss-keras'.

At the packed shapes of `train_throughput.py` (t5-v1_1-small: width 512,
6 heads of 64, dropout 0.1; four rows of packed examples): encoder
self-attention over 192 tokens, decoder self-attention over 80 and
cross-attention from 80 decoder tokens to 192 encoder tokens. Each side runs
the layer's training call and its gradient (inputs and weights) in one
`tf.function`, with the same weights, masks and dropout draws; sides
alternate, and the best of `--repeats` timings of 20 calls is printed.

    python benchmarks/attention_step.py
    python benchmarks/attention_step.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime  # light: imports no TensorFlow

use_fast_cpu_runtime()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROWS, HIDDEN, HEADS, HEAD_DIM = 4, 512, 6, 64
# (name, queries, keys: None for self-attention, decoder layer)
CASES = [("encoder self-attention", 192, None, False), ("decoder self-attention", 80, None, True),
         ("cross-attention", 80, 192, True)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def make_layer(layer_class, keys: int | None, is_decoder: bool):
    """One case's attention layer; the same weights for either class."""
    import keras

    keras.utils.set_random_seed(0)
    return layer_class(is_decoder=is_decoder, hidden_dim=HIDDEN, key_value_dim=HEAD_DIM,
                       num_heads=HEADS, dropout=0.1, use_relative_attention_bias=keys is None)


def training_step(layer, queries: int, keys: int | None):
    """A `tf.function` of the layer's training call and its gradient, and its inputs."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    hidden = generator.normal((ROWS, queries, HIDDEN))
    source = None if keys is None else generator.normal((ROWS, keys, HIDDEN))
    mask = tf.ones((ROWS, queries, keys or queries), tf.bool)

    @tf.function
    def step(hidden, source, seed_state):
        for variable in layer.non_trainable_variables:  # the same dropout draws each call
            variable.assign(seed_state)
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            output, _, _ = layer(hidden, mask=mask, key_value_states=source, training=True)
            loss = tf.reduce_sum(output * output)
        return [tf.convert_to_tensor(g)
                for g in tape.gradient(loss, [hidden, *layer.trainable_variables])]

    return step, (hidden, source)


def set_threads(threads: int) -> None:
    """TensorFlow's intra-op and inter-op thread pools, both `threads` wide."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def best_times(steps: dict, repeats: int, calls: int = 20) -> dict:
    """Per side of `steps` (`{side: (step, inputs)}`), the best mean time of `calls` calls.

    The sides alternate, `repeats` times; every call draws the same dropout masks.
    """
    import tensorflow as tf

    seed_state = tf.constant([1, 2], tf.int64)
    best = {side: float("inf") for side in steps}
    for _ in range(repeats):
        for side, (step, inputs) in steps.items():
            step(*inputs, seed_state)  # traced and warm
            start = time.perf_counter()
            for _ in range(calls):
                gradients = step(*inputs, seed_state)
            [g.numpy() for g in gradients]
            best[side] = min(best[side], (time.perf_counter() - start) / calls)
    return best


def main(argv=None) -> None:
    args = parse_args(argv)
    from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

    from dss_keras.tf_fast_path.lean_t5 import T5AttentionRecomputingProbabilities

    set_threads(args.threads)
    print(f"one attention layer, training call and gradient, {ROWS} rows, {args.threads} threads")
    for name, queries, keys, is_decoder in CASES:
        steps = {side.__name__: training_step(make_layer(side, keys, is_decoder), queries, keys)
                 for side in (T5MultiHeadAttention, T5AttentionRecomputingProbabilities)}
        keras_hub, ours = best_times(steps, args.repeats).values()
        print(f"  {name} ({queries} x {keys or queries}): KerasHub {keras_hub * 1e3:.2f} ms, "
              f"dss-keras {ours * 1e3:.2f} ms, {keras_hub / ours:.2f}x")


if __name__ == "__main__":
    main()
