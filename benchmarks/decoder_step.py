"""One greedy decoder step of the export's decoder, timed in parts.

The label-only SavedModel spends most of a batch-1 request in decoder steps
(16 for a 16-token label). This times one step of the decoder the export
traces (`decoding.decoder_for(model, frozen=True)`, bfloat16 kernels kept
transposed and stacked), at batch 1 and 32, on a random model of the
t5-v1.1-small shape, and its output projection alone (the layers take the
rest). It also counts the ops of the step's graph: with one token per
row, each op's fixed cost is a visible part of the step.

To compare two versions of the code, run it from each checkout in turn:

    python benchmarks/decoder_step.py --threads 1 --precision bfloat16
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """This script's flags, and the rest: model shape flags as `serving_latency.py` takes."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="Model shape flags (--hidden-dim, --num-layers, ...) as serving_latency.py's.")
    parser.add_argument("--precision", default="bfloat16",
                        choices=["float32", "bfloat16", "int8"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--position", type=int, default=8,
                        help="the step's position (tokens already in the cache)")
    parser.add_argument("--repeats", type=int, default=200)
    return parser.parse_known_args(argv)


def main(argv=None) -> dict:
    args, shape_flags = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    import serving_latency
    from dss_keras import decoding
    from dss_keras.export_precision import with_precision

    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # called in a process whose TensorFlow already runs
        print("TensorFlow had started in this process: its thread counts stay")
    shape = serving_latency.parse_args(shape_flags)
    model = serving_latency.build_keras_model(shape)
    seq2seq_lm = with_precision(model.seq2seq_lm, args.precision)  # the decoder refers to it weakly
    decoder = decoding.decoder_for(seq2seq_lm, frozen=True)

    results = {}
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        parts = _step_parts(tf, decoder, batch, shape.input_length, args.position)
        for part in parts.values():  # warm up
            part.run()
        timings = serving_latency.interleaved(parts, [None] * args.repeats)
        for name, seconds in timings.items():
            results[f"{name}, batch {batch}"] = seconds
            print(f"{name:6s} batch {batch:3d}: min {1e3 * np.min(seconds):7.2f} ms, "
                  f"p50 {1e3 * np.median(seconds):7.2f} ms")
    graph = parts["step"].concrete.graph
    ops = collections.Counter(op.type for op in graph.get_operations()
                              if op.type not in ("Const", "Placeholder", "Identity"))
    common = ", ".join(f"{count} {kind}" for kind, count in ops.most_common(8))
    print(f"ops in one step: {sum(ops.values())} ({common})")
    return results


class _Part:
    """A traced function on fixed inputs; `run` waits for its result (a side of
    `serving_latency.interleaved`, whose requests it ignores)."""

    def __init__(self, function, *inputs):
        self.concrete = function.get_concrete_function(*inputs)
        self.inputs = inputs

    def run(self, request=None):
        return np.asarray(self.concrete(*self.inputs))


def _step_parts(tf, decoder, batch: int, input_length: int, position: int) -> dict:
    """The whole step and its output projection alone (the layers are the difference)."""
    ids = tf.ones([batch, input_length], tf.int32)
    state = decoder.start(ids, tf.ones_like(ids), position + 1)
    cache = decoder.empty_cache(batch, state)
    tokens = tf.zeros([batch], tf.int32)
    for t in range(position):
        _, cache = decoder.step(state, cache, tokens, tf.constant(t))

    @tf.function
    def step(tokens, position):
        logits, _ = decoder.step(state, cache, tokens, position)
        return tf.argmax(logits, -1)

    @tf.function
    def head(hidden):
        return tf.argmax(decoder._logits(hidden, one_row=True), -1)

    here = tf.constant(position)
    return {"step": _Part(step, tokens, here),
            "head": _Part(head, tf.random.normal([batch, decoder.backbone.hidden_dim]))}


if __name__ == "__main__":
    main()
