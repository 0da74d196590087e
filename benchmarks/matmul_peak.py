"""fp32 matmul speed of this CPU in TensorFlow, at the training step's shapes.

The yardstick for `train_throughput.py`: a step of about N GFLOP at S s/step
runs at N / S GFLOP/s, to be read against what a bare matmul reaches here.
Shapes are `[tokens, in] x [in, out]` of the t5-v1_1-small step (400 and 800
tokens per call: a task's or both tasks' packed rows; the 32,128-wide output
layer at about 300 target tokens) and one large square one.

    python benchmarks/matmul_peak.py
    python benchmarks/matmul_peak.py --threads 1 --onednn false

Prints GFLOP/s per shape (the best of `--repeats` timings of 10 calls each).
"""

from __future__ import annotations

import argparse
import os
import time

SHAPES = [(400, 512, 384), (400, 512, 1024), (400, 1024, 512),
          (800, 512, 384), (800, 512, 1024), (800, 1024, 512),
          (300, 512, 32128), (2048, 2048, 2048)]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--onednn", choices=["true", "false"], default="true",
                   help="TF_ENABLE_ONEDNN_OPTS (what dss-keras runs: true)")
    p.add_argument("--repeats", type=int, default=5)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if args.onednn == "true" else "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    matmul = tf.function(tf.matmul)
    print(f"fp32 matmul, {args.threads} threads, oneDNN {args.onednn}")
    for rows, inner, columns in SHAPES:
        a = tf.random.normal([rows, inner])
        b = tf.random.normal([inner, columns])
        matmul(a, b).numpy()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(10):
                out = matmul(a, b)
            out.numpy()
            best = min(best, (time.perf_counter() - start) / 10)
        print(f"  [{rows}, {inner}] x [{inner}, {columns}]: "
              f"{2 * rows * inner * columns / best / 1e9:6.1f} GFLOP/s")


if __name__ == "__main__":
    main()
