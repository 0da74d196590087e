"""What this machine allows a seq2seq server: bytes over memory speed, FLOPs over matrix speed.

A request can go no faster than reading the bytes it needs from memory and
doing its matrix products at the machine's matrix speed. This module measures
both on this machine (`measure_machine`) and counts a T5's bytes and FLOPs
per request (`ModelCounts`), so that `serving_latency.py` can state each
figure as a fraction of its floor:

- memory speed: the best of a few timed `tf.reduce_sum` over 1 GiB, a buffer
  larger than the caches, with the benchmark's threads;
- matrix speed at each precision: the best rate of `tf.matmul` over a few
  shapes of the benchmark's model (the encoder's products at batch 32, the
  output layer's), float32, bfloat16, and int8 x int8 -> int32 (what the int8
  export computes with);
- a request's time floor is `max(bytes / memory speed, FLOPs / matrix speed)`
  (a roofline): weights are read once per decoder step for the whole batch,
  and the encoder's once per batch; the caches' reads count too.

    python benchmarks/serving_floor.py --threads 1
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

# Bytes per weight and per activation element, by precision (int8 computes in float32
# between its products).
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2, "int8": 1}
ACTIVATION_BYTES = {"float32": 4, "bfloat16": 2, "int8": 4}
_SHAPES = [(2048, 512, 1024), (2048, 1024, 512), (512, 512, 32128)]


@dataclasses.dataclass(frozen=True)
class Machine:
    """Measured speeds: bytes/s of memory, and FLOP/s of matrix products per precision."""

    memory_bytes_per_second: float
    matmul_flops_per_second: dict

    def describe(self) -> str:
        speeds = ", ".join(f"{name} {rate / 1e9:.0f}" for name, rate in
                           self.matmul_flops_per_second.items())
        return (f"memory {self.memory_bytes_per_second / 1e9:.1f} GB/s; "
                f"matmul GFLOP/s: {speeds}")


def measure_machine(repeats: int = 5) -> Machine:
    """Times memory reads and matrix products with TensorFlow's current thread settings."""
    import tensorflow as tf

    memory = _memory_bytes_per_second(repeats)
    speeds = {}
    for precision, dtype in (("float32", tf.float32), ("bfloat16", tf.bfloat16),
                             ("int8", tf.int8)):
        output = tf.int32 if dtype == tf.int8 else None
        product = tf.function(lambda a, b, o=output: tf.matmul(a, b, output_type=o)
                              if o is not None else tf.matmul(a, b))
        best = 0.0
        for rows, inner, columns in _SHAPES:
            a = tf.cast(tf.random.uniform([rows, inner], -8, 8), dtype)
            b = tf.cast(tf.random.uniform([inner, columns], -8, 8), dtype)
            seconds = _best_seconds(lambda: product(a, b).numpy(), repeats)
            best = max(best, 2 * rows * inner * columns / seconds)
        speeds[precision] = best
    return Machine(memory, speeds)


def fastest(*machines: Machine) -> Machine:
    """The best speed of each kind over several measurements (others' load only slows one)."""
    return Machine(
        max(m.memory_bytes_per_second for m in machines),
        {name: max(m.matmul_flops_per_second[name] for m in machines)
         for name in machines[0].matmul_flops_per_second},
    )


def _memory_bytes_per_second(repeats: int) -> float:
    import tensorflow as tf

    total = tf.function(tf.reduce_sum)
    buffer = tf.ones([256 * 1024 * 1024], tf.float32)  # 1 GiB
    return buffer.shape[0] * 4 / _best_seconds(lambda: total(buffer).numpy(), repeats)


def _best_seconds(function, repeats: int) -> float:
    function()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - started)
    return best


@dataclasses.dataclass(frozen=True)
class ModelCounts:
    """A T5's weights by where they are read, and its attention's width.

    Attributes:
        encoder_params: Weights read once per batch by the encoder (its
            layers and final norm; embeddings excluded: a lookup reads rows).
        cross_params: The decoder's cross-attention key and value
            projections, applied once per batch to the encoder output.
        decoder_params: Weights read at every decoder step (the rest of the
            decoder's layers, its final norm and the output projection).
        num_layers: Decoder layers (and encoder layers).
        attention_width: heads x head size.
    """

    encoder_params: int
    cross_params: int
    decoder_params: int
    num_layers: int
    attention_width: int

    @classmethod
    def of(cls, seq2seq_lm) -> "ModelCounts":
        backbone = seq2seq_lm.backbone

        def count(weights):
            return int(sum(int(w.numpy().size) for w in weights))

        cross = [w for layer in backbone.decoder_transformer_layers
                 for projector in (layer.cross_attention.key_projector,
                                   layer.cross_attention.value_projector)
                 for w in projector.weights]
        decoder = [w for layer in backbone.decoder_transformer_layers for w in layer.weights]
        embedding = backbone.token_embedding
        output = [embedding.embeddings if backbone.tie_embedding_weights
                  else embedding.reverse_embeddings]
        attention = backbone.decoder_transformer_layers[0].self_attention
        return cls(
            encoder_params=count([w for layer in backbone.encoder_transformer_layers
                                  for w in layer.weights] + backbone.encoder_layer_norm.weights),
            cross_params=count(cross),
            decoder_params=count(decoder) - count(cross)
            + count(backbone.decoder_layer_norm.weights) + count(output),
            num_layers=len(backbone.decoder_transformer_layers),
            attention_width=attention.num_heads * attention.key_value_dim,
        )

    def generation(self, batch: int, input_length: int, steps: int,
                   precision: str) -> tuple[float, float]:
        """(bytes, FLOPs) of one batch of greedy generation, `steps` decoder steps."""
        w, a = WEIGHT_BYTES[precision], ACTIVATION_BYTES[precision]
        width, layers = self.attention_width, self.num_layers
        weight_bytes = (self.encoder_params + self.cross_params + steps * self.decoder_params) * w
        # Each step reads every layer's cross keys and values and its own cache so far.
        cache_bytes = sum(batch * layers * 2 * (input_length + t + 1) * width * a
                          for t in range(steps))
        flops = batch * (self.encoder_flops(input_length)
                         + 2 * self.cross_params * input_length
                         + sum(2 * self.decoder_params
                               + layers * 4 * (input_length + t + 1) * width
                               for t in range(steps)))
        return weight_bytes + cache_bytes, flops

    def scoring(self, batch: int, input_length: int, candidates: int, length: int,
                precision: str) -> tuple[float, float]:
        """(bytes, FLOPs) of one batch of the one-pass scorer, `candidates` x `length` tokens."""
        w, a = WEIGHT_BYTES[precision], ACTIVATION_BYTES[precision]
        width, layers = self.attention_width, self.num_layers
        positions = candidates * length
        weight_bytes = (self.encoder_params + self.cross_params + self.decoder_params) * w
        cache_bytes = batch * layers * 2 * input_length * width * a
        flops = batch * (self.encoder_flops(input_length)
                         + 2 * self.cross_params * input_length
                         + positions * (2 * self.decoder_params
                                        + layers * 4 * (input_length + length) * width))
        return weight_bytes + cache_bytes, flops

    def encoder_flops(self, input_length: int) -> float:
        """FLOPs of the encoder over one input of `input_length` tokens."""
        attention = self.num_layers * 4 * input_length * input_length * self.attention_width
        return 2 * self.encoder_params * input_length + attention


def floor_seconds(machine: Machine, bytes_and_flops: tuple[float, float],
                  precision: str) -> float:
    """The roofline: the longer of reading the bytes and doing the FLOPs."""
    size, flops = bytes_and_flops
    return max(size / machine.memory_bytes_per_second,
               flops / machine.matmul_flops_per_second[precision])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=0, help="0: all cores")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    threads = args.threads or os.cpu_count()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    print(f"{threads} threads: {measure_machine().describe()}")


if __name__ == "__main__":
    main()
