"""Training steps/s of one device against a MirroredStrategy over logical devices.

Both runs train the same model on the same global batches through
`dss_keras.training.fit`, each in its own process: one with the default
strategy, one with `strategy="mirrored"` over `--replicas` logical CPU devices
(or the GPUs, when there are). The first period of `--steps` steps traces and
warms up; the second is timed.

    python benchmarks/strategy_throughput.py                  # ~2 minutes on 2 cores
    python benchmarks/strategy_throughput.py --batch-size 64 --steps 20

Prints steps/s and examples/s of each run and the ratio; `--json-out` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

WORKER = """
import json, sys, time
import tensorflow as tf
replicas, batch_size, steps = (int(a) for a in sys.argv[1:4])
if replicas > 1 and not tf.config.list_physical_devices("GPU"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
import keras
from dss_keras import training
from dss_keras.config import TrainConfig
from dss_keras.data import Splits, load

class Timer(keras.callbacks.Callback):
    seconds = []
    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()
    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self.start)

config = TrainConfig(data="word_problems:2000", batch_size=batch_size, steps=2 * steps,
                     eval_every=steps, vocabulary_size=1000, hidden_dim=64, num_layers=2,
                     num_heads=4, intermediate_dim=128, max_input_length=64,
                     max_label_length=8, max_rationale_length=48,
                     strategy="mirrored" if replicas > 1 else "default")
splits = load(config.data, validation_fraction=0.0)
timer = Timer()
result = training.fit(config, Splits(splits.train, [], []), callbacks=[timer], verbose=0)
seconds = timer.seconds[-1]
print("RESULT " + json.dumps({
    "replicas": result.model.distribute_strategy.num_replicas_in_sync,
    "steps_per_second": steps / seconds, "examples_per_second": steps * batch_size / seconds}))
"""


def run(replicas: int, batch_size: int, steps: int) -> dict:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", WORKER, str(replicas),
                          str(batch_size), str(steps)], capture_output=True, text=True,
                         env=env, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        raise SystemExit(f"{replicas} replica(s) failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch")
    parser.add_argument("--steps", type=int, default=30, help="timed steps (after as many warm-up)")
    parser.add_argument("--json-out")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    results = {"one_device": run(1, args.batch_size, args.steps),
               "mirrored": run(args.replicas, args.batch_size, args.steps)}
    results["ratio"] = (results["mirrored"]["steps_per_second"]
                        / results["one_device"]["steps_per_second"])
    results["settings"] = vars(args)
    for name in ("one_device", "mirrored"):
        r = results[name]
        print(f"{name:>10}: {r['replicas']} replica(s), {r['steps_per_second']:.2f} steps/s, "
              f"{r['examples_per_second']:.1f} examples/s")
    print(f"mirrored / one device: {results['ratio']:.2f} "
          f"(global batch {args.batch_size}; {time.perf_counter() - start:.0f} s in all)")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
