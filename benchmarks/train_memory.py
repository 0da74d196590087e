"""Where the memory of a dss-keras training process goes, phase by phase.

Trains the shape and data of `train_throughput.py` (t5-v1_1-small shape, CQA,
batch 8, the fast path) and prints, after each phase, the process' resident
memory (RSS, now and peak) and what TensorFlow's tensors hold (now and peak).
TensorFlow reports the latter only with a pooled CPU allocator, which the
script turns on as `dss-keras` does (`dss_keras.tf_fast_path.cpu_runtime`: oneDNN kernels,
else the BFC allocator). With `--torch-python`, it also prints the RSS of
importing the authors' PyTorch stack, for comparison.

    python benchmarks/train_memory.py --steps 13
    TF_ENABLE_ONEDNN_OPTS=0 TF_CPU_ALLOCATOR_USE_BFC=false \
        python benchmarks/train_memory.py                             # RSS only
    python benchmarks/train_memory.py --torch-python /path/to/venv/bin/python
    python benchmarks/train_memory.py --bf16                         # mixed_bfloat16
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime  # light: imports no TensorFlow

POOLED_ALLOCATOR = use_fast_cpu_runtime()["pooled_allocator"]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
# Current RSS, not ru_maxrss: a child keeps the peak of the process it was forked from.
TORCH_IMPORTS = ("import os, torch, transformers, datasets, accelerate, pandas; "
                 "print(int(open('/proc/self/statm').read().split()[1]) "
                 "* os.sysconf('SC_PAGE_SIZE') / 2**20)")


def _rss_mb() -> tuple[float, float]:
    with open("/proc/self/statm") as f:
        now = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return now, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _report(phase: str, tensorflow_ready: bool = True) -> None:
    now, peak = _rss_mb()
    line = f"{phase:34s} RSS {now:6.0f} MB (peak {peak:6.0f})"
    if tensorflow_ready and POOLED_ALLOCATOR:
        import tensorflow as tf

        info = tf.config.experimental.get_memory_info("CPU:0")
        line += f"   tensors {info['current'] / 2**20:6.0f} MB (peak {info['peak'] / 2**20:6.0f})"
    print(line, flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="as in train_throughput.py")
    p.add_argument("--steps", type=int, default=13)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--variant", default="fast", help="a variant of train_throughput.py")
    p.add_argument("--bf16", action="store_true", help="Keras' mixed_bfloat16 policy")
    p.add_argument("--torch-python", help="a Python with torch and transformers")
    args = p.parse_args(argv)

    _report("start", tensorflow_ready=False)
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    _report("TensorFlow and Keras imported")
    sys.path.insert(0, str(HERE))
    import train_throughput as bench

    import dss_keras.model  # noqa: F401  (KerasHub and TF Text come with it)
    import dss_keras.training  # noqa: F401

    _report("dss_keras (KerasHub, TF Text) imported")
    records, proto = bench.load_inputs(args.data_dir)
    model, dataset = bench.build_variant(proto, records, bench.VARIANTS[args.variant], args.steps,
                                         batch_size=8, bf16=args.bf16)
    _report("model (77M weights) and dataset built")

    class Phases(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            if batch < 2 or batch % 4 == 0 or batch == args.steps - 1:
                _report(f"step {batch} ({time.perf_counter() - self.start:.1f} s)")

    model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[Phases()])
    if args.torch_python:
        done = subprocess.run([args.torch_python, "-c", TORCH_IMPORTS], capture_output=True,
                              text=True, check=True)
        print(f"{'torch stack imported (other process)':34s} RSS "
              f"{float(done.stdout.split()[-1]):6.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
