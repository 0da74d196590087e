"""The quickstart over several seeds: mean and spread of what `make demo` prints for one.

Each seed runs the quickstart (`dss_keras.quickstart.run_quickstart`: the same
data, the ~0.3M-parameter T5, 1,200 steps of batch 32, standard finetuning
and distilling step-by-step) with another initialisation and data order, and
the held-out exact-match accuracy of both is collected. Finished seeds are
kept in `<out>/seed-<seed>/`, so an interrupted run resumes.

    python benchmarks/quickstart_seeds.py                 # seeds 0-4, ~20 min on 2 cores
    python benchmarks/quickstart_seeds.py --seeds 0,1 --steps 300
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--out", default="runs/quickstart_seeds")
    parser.add_argument("--json-out", help="write the per-seed figures here")
    args = parser.parse_args(argv)

    from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime
    from dss_keras.quiet import quiet_tensorflow

    use_fast_cpu_runtime()  # as `dss-keras` runs
    quiet_tensorflow()
    from dss_keras import quickstart

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        start = time.perf_counter()
        config = quickstart.get_config(run_dir=args.out, seed=seed, steps=args.steps)
        results = quickstart.run_quickstart(config, verbose=0, echo=lambda _: None)
        row = {"seed": seed, "wall_seconds": time.perf_counter() - start}
        for name, result in results.items():
            row[name] = result.metrics["test"]["accuracy"]
            row[f"{name} train seconds"] = result.metrics["train_seconds"]
        rows.append(row)
        print(f"seed {seed}: " + ", ".join(
            f"{name} {row[name] * 100:.1f}%" for name in quickstart.MODES), flush=True)

    print(f"\nHeld-out exact match over {len(rows)} seeds, {args.steps} steps "
          "(mean ± sd, min-max):")
    for name in quickstart.MODES:
        values = [row[name] * 100 for row in rows]
        spread = statistics.stdev(values) if len(values) > 1 else float("nan")
        print(f"  {name:26s} {statistics.fmean(values):5.1f} ± {spread:4.1f}   "
              f"({min(values):.1f}-{max(values):.1f})")
    gains = [(row["distilling step-by-step"] - row["standard finetuning"]) * 100 for row in rows]
    print(f"  distilling step-by-step - standard: {statistics.fmean(gains):+.1f} points, "
          f"ahead in {sum(g > 0 for g in gains)} of {len(gains)} seeds")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
