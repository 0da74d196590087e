"""What the backward pass keeps of the forward pass, by kind of tensor.

Builds the model and batches of `train_throughput.py` (t5-v1_1-small shape,
CQA, batch 8; `--variant`, default `fast`), traces the loss and its gradient
for one batch, and lists the forward tensors that the gradient's ops read
(their values, not only their shapes): the activations that stay alive from
the forward pass to the backward pass. Sizes are those of the batch given
(`--batch`, 0-based). Weights and constants are left out.

    python benchmarks/kept_activations.py
    python benchmarks/kept_activations.py --variant fast-autodiff-gelu --batch 3
    python benchmarks/kept_activations.py --bf16

Prints the total, then the bytes by the producing op and the op that reads
them in the backward pass (`Reshape <- MatMul`: a Dense layer's input, kept for
its kernel's gradient), and by encoder, decoder and the rest.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime  # light: imports no TensorFlow
from dss_keras.quiet import quiet_tensorflow

use_fast_cpu_runtime()
quiet_tensorflow()  # no C++ log lines from TensorFlow's import in the report
HERE = Path(__file__).resolve().parent
SHAPE_ONLY_READERS = {"Shape", "ShapeN", "Size", "Rank", "ZerosLike", "OnesLike"}  # not values
NOT_ACTIVATIONS = {"ReadVariableOp", "Const", "VarHandleOp"}


def kept_tensors(model, x, y, sample_weight) -> list[tuple[str, str, str, int]]:
    """`(producer type, producer name, reader types, bytes)` of each kept forward tensor."""
    import tensorflow as tf

    found = []

    @tf.function
    def loss_and_gradient(x, y, sample_weight):
        with tf.GradientTape() as tape:
            loss, _ = model.compute_task_losses(x, y, sample_weight, training=True)
        graph = tf.compat.v1.get_default_graph()
        forward = set(graph.get_operations())
        tape.gradient(loss, model.trainable_variables)
        readers = collections.defaultdict(set)
        tensors = {}
        for op in graph.get_operations():
            if op in forward or op.type in SHAPE_ONLY_READERS:
                continue
            for tensor in op.inputs:
                if tensor.op in forward and tensor.op.type not in NOT_ACTIVATIONS:
                    tensors[tensor.name] = tensor
                    readers[tensor.name].add(op.type)
        for name, tensor in tensors.items():
            found.append((tensor.op.type, tensor.op.name, ",".join(sorted(readers[name])),
                          tensor.dtype.size))
        return [tf.size(tensor, out_type=tf.int64) for tensor in tensors.values()]

    sizes = loss_and_gradient(x, y, sample_weight)
    return [(kind, name, readers, itemsize * int(size))
            for (kind, name, readers, itemsize), size in zip(found, sizes)]


def _print_totals(title: str, totals: collections.Counter, counts: collections.Counter) -> None:
    print(f"\n{title:44s} {'MB':>8s} {'tensors':>8s}")
    for key, size in totals.most_common():
        if size >= 2**19:  # 0.5 MB and more
            print(f"{key:44s} {size / 2**20:8.1f} {counts[key]:8d}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="as in train_throughput.py")
    p.add_argument("--variant", default="fast", help="a variant of train_throughput.py")
    p.add_argument("--batch", type=int, default=0, help="which batch of the dataset")
    p.add_argument("--bf16", action="store_true", help="Keras' mixed_bfloat16 policy")
    args = p.parse_args(argv)
    import keras

    sys.path.insert(0, str(HERE))
    import train_throughput as bench

    from dss_keras.data.records import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        data_args = [] if args.data_dir is None else ["--data-dir", args.data_dir]
        bench_args = bench.parse_args(data_args)
        records_path, spm = bench.prepare_inputs(bench_args, Path(tmp))
        records, proto = read_jsonl(records_path), spm.read_bytes()
    model, dataset = bench.build_variant(proto, records, bench.VARIANTS[args.variant],
                                         steps=args.batch + 1, batch_size=8, bf16=args.bf16)
    batch = next(iter(dataset.skip(args.batch)))
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(batch)
    kept = kept_tensors(model, x, y, sample_weight)

    by_pair, by_part = collections.Counter(), collections.Counter()
    pair_count, part_count = collections.Counter(), collections.Counter()
    for kind, name, readers, size in kept:
        pair = f"{kind} <- {readers}"
        part = "encoder" if "encoder" in name else "decoder" if "decoder" in name else "rest"
        by_pair[pair] += size
        pair_count[pair] += 1
        by_part[part] += size
        part_count[part] += 1
    print(f"variant {args.variant}{' (bf16)' if args.bf16 else ''}, batch {args.batch}: "
          f"{sum(size for *_, size in kept) / 2**20:.1f} MB kept for the backward pass "
          f"in {len(kept)} tensors")
    _print_totals("kept tensor <- what reads it", by_pair, pair_count)
    _print_totals("part of the model", by_part, part_count)
    return 0


if __name__ == "__main__":
    sys.exit(main())
