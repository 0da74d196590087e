"""Time of one T5 layer's training call and gradient: KerasHub's feed-forward block against dss-keras'.

At the packed shapes of `train_throughput.py` (t5-v1_1-small: width 512,
inner width 1024, gated tanh-GELU, 6 heads of 64, dropout 0.1; four rows of
packed examples): an encoder layer over 192 tokens and a decoder layer over
80 (cross-attending to 192). Both sides are whole T5 layers with dss-keras'
norms and attention (`dss_keras.tf_fast_path.lean_t5`), so they differ only in the
feed-forward block: KerasHub's `T5TransformerLayer` differentiates it op by
op, `T5LayerRecomputingFeedForward` runs `dss_keras.tf_fast_path.lean_feed_forward`. Each
side runs the training call and its gradient (inputs and weights) in one
`tf.function`, with the same weights and dropout draws; sides alternate, and
the best of `--repeats` timings of 20 calls is printed.

    python benchmarks/feed_forward_step.py
    python benchmarks/feed_forward_step.py --threads 1
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime  # light: imports no TensorFlow

use_fast_cpu_runtime()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROWS, HIDDEN, INNER, HEADS, HEAD_DIM = 4, 512, 1024, 6, 64
SOURCE = 192  # encoder tokens per row, which the decoder layer attends to
CASES = [("encoder layer", 192, False), ("decoder layer", 80, True)]  # (name, tokens, decoder)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def make_layer(layer_class, is_decoder: bool):
    """One case's T5 layer of `layer_class`, with lean norms and attention; same weights."""
    import keras
    import numpy as np
    from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer

    from dss_keras.tf_fast_path.activations import gelu_tanh
    from dss_keras.tf_fast_path.lean_t5 import LEAN_CLASSES, swap_layer_class

    keras.utils.set_random_seed(0)
    layer = T5TransformerLayer(
        is_decoder=is_decoder, hidden_dim=HIDDEN, intermediate_dim=INNER, key_value_dim=HEAD_DIM,
        dropout=0.1, activation=gelu_tanh, layer_norm_epsilon=1e-6, num_heads=HEADS,
        use_gated_activation=True, use_relative_attention_bias=True)
    source = np.zeros((1, SOURCE, HIDDEN), "float32") if is_decoder else None
    layer(np.zeros((1, 4, HIDDEN), "float32"), encoder_hidden_states=source)  # builds it
    for old, new in LEAN_CLASSES.items():
        if old is not T5TransformerLayer:
            swap_layer_class(layer, old, new)
    layer.__class__ = layer_class
    return layer


def training_step(layer, tokens: int):
    """A `tf.function` of the layer's training call and its gradient, and its inputs."""
    import tensorflow as tf

    generator = tf.random.Generator.from_seed(0)
    hidden = generator.normal((ROWS, tokens, HIDDEN))
    source = generator.normal((ROWS, SOURCE, HIDDEN)) if layer.is_decoder else None
    mask = tf.ones((ROWS, tokens, tokens), tf.bool)
    cross_mask = tf.ones((ROWS, tokens, SOURCE), tf.bool) if layer.is_decoder else None

    @tf.function
    def step(hidden, source, seed_state):
        for variable in layer.non_trainable_variables:  # the same dropout draws each call
            variable.assign(seed_state)
        with tf.GradientTape() as tape:
            tape.watch(hidden)
            output, _ = layer(hidden, attention_mask=mask, encoder_hidden_states=source,
                              encoder_attention_mask=cross_mask, use_causal_mask=layer.is_decoder,
                              training=True)
            loss = tf.reduce_sum(output * output)
        return [tf.convert_to_tensor(g)
                for g in tape.gradient(loss, [hidden, *layer.trainable_variables])]

    return step, (hidden, source)


def main(argv=None) -> None:
    args = parse_args(argv)
    from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer

    from dss_keras.tf_fast_path.lean_t5 import T5LayerRecomputingFeedForward

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from attention_step import best_times, set_threads  # the same timing

    set_threads(args.threads)
    print(f"one T5 layer, training call and gradient, {ROWS} rows, {args.threads} threads")
    for name, tokens, is_decoder in CASES:
        steps = {side.__name__: training_step(make_layer(side, is_decoder), tokens)
                 for side in (T5TransformerLayer, T5LayerRecomputingFeedForward)}
        keras_hub, ours = best_times(steps, args.repeats).values()
        print(f"  {name} ({tokens} tokens a row): KerasHub's block {keras_hub * 1e3:.2f} ms, "
              f"dss-keras' {ours * 1e3:.2f} ms, {keras_hub / ours:.2f}x")


if __name__ == "__main__":
    main()
