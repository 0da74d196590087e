"""Data efficiency: distilling step-by-step against standard finetuning, by training fraction.

A tiny T5 is trained from scratch on 12.5/25/50/100% of a training set, with
several seeds, once on labels only (standard finetuning, human labels) and
once on labels and teacher rationales (distilling step-by-step, human labels,
alpha 0.5), and its generated labels are scored on a held-out test set with
the benchmark's metric. Two budgets are compared:

- equal optimizer steps (the paper's comparison): both methods train `--steps`
  steps;
- equal compute: standard finetuning trains `--compute-multiplier` times as
  many steps (default 2x), since a distilling step-by-step step also runs the
  rationale task. The measured per-step cost ratio (median step time, both
  tasks over label only) is printed next to it, so the multiplier can be
  checked against what the rationale task really costs.

The standard run of `multiplier * steps` steps is scored at `steps` steps as
well, which gives the equal-steps figure of the same run (the learning rate
is constant, so the first `steps` steps are those of a shorter run).

Per seed, both methods train on the same subset (`take_fraction`, nested
across fractions), from the same initial weights, with the same vocabulary
(one SentencePiece model per dataset, trained on its full training split, as
a pretrained tokenizer would be fixed). Evaluation is at the end of the budget,
no checkpoint selection.

Every finished run is stored in `<out>/results.json` as soon as it ends, and
each run directory resumes from its last backup, so an interrupted benchmark
picks up where it stopped:

    python benchmarks/data_efficiency.py                       # reduced grid, ~40 min on 2 cores
    python benchmarks/data_efficiency.py --grid full           # 4 fractions x 5 seeds, many hours
    python benchmarks/data_efficiency.py --datasets word_problems --seeds 0,1 --steps 200
    python benchmarks/data_efficiency.py --report-only         # tables and plot from results.json

SVAMP (and CQA) are read from the paper's data release, `--data-dir`
(default `../shared/data/dss_official`, relative to the repository root).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import statistics
import sys
import time
from typing import Callable


REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("standard", "distill_step_by_step")
BUDGETS = ("equal steps", "equal compute")


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset of the benchmark: the grid over it and the model trained on it."""

    name: str
    fractions: tuple[float, ...]
    seeds: tuple[int, ...]
    steps: int
    overrides: dict  # TrainConfig fields on top of the quickstart's settings


# The quickstart's settings (`dss_keras.quickstart.get_config`: the
# ~0.3M-parameter T5, 2+2 layers, width 64) on its task, and the same shape
# with longer budgets and a larger vocabulary for SVAMP and CQA.
_RELEASE_MODEL = dict(
    vocabulary_size=800, max_input_length=128, max_label_length=32, max_rationale_length=96,
)
GRIDS = {
    "reduced": {
        "word_problems": DatasetSpec("word_problems", (0.125, 0.5, 1.0), (0, 1, 2), 600, {}),
        "svamp": DatasetSpec("svamp", (0.25, 1.0), (0, 1, 2), 600, _RELEASE_MODEL),
        "cqa": DatasetSpec("cqa", (0.25, 1.0), (0, 1, 2), 600, _RELEASE_MODEL),
    },
    "full": {
        "word_problems": DatasetSpec("word_problems", (0.125, 0.25, 0.5, 1.0),
                                     (0, 1, 2, 3, 4), 1200, {}),
        "svamp": DatasetSpec("svamp", (0.125, 0.25, 0.5, 1.0), (0, 1, 2, 3, 4),
                             1200, _RELEASE_MODEL),
        "cqa": DatasetSpec("cqa", (0.125, 0.25, 0.5, 1.0), (0, 1, 2, 3, 4),
                           2000, _RELEASE_MODEL),
    },
}


def run_config(spec: DatasetSpec, method: str, fraction: float, seed: int, steps: int,
               eval_every: int, run_dir: str, data_dir: str | None = None):
    """The `TrainConfig` of one run: the quickstart's settings, the spec's, the run's."""
    from dss_keras.quickstart import get_config

    data = {"data": spec.name}
    if spec.name != "word_problems":
        data.update(data_dir=data_dir, validation_fraction=0.1)
    return get_config(
        run_dir=run_dir, **data, **spec.overrides, mode=method, train_fraction=fraction, seed=seed,
        steps=steps, eval_every=eval_every)


# --- one run -------------------------------------------------------------------


def _callbacks(run_dir: str, test_records, metric: str):
    """Callbacks that store test accuracy per evaluation and the step times in `run_dir`."""
    import keras

    from dss_keras.evaluation import GenerationEvaluation

    class RecordingEvaluation(GenerationEvaluation):
        def on_epoch_end(self, epoch, logs=None):
            super().on_epoch_end(epoch, logs)
            row = {"step": int(self.model.optimizer.iterations.numpy()),
                   **self.last_result.to_dict()}
            with open(os.path.join(run_dir, "evals.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")

    class StepTimer(keras.callbacks.Callback):
        """Median wall time of a training step, skipping the first (tracing) ones."""

        def on_train_begin(self, logs=None):
            self.durations, self.start = [], None

        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.durations.append(time.perf_counter() - self.start)

        def on_train_end(self, logs=None):
            kept = self.durations[20:] or self.durations
            timing = {"median_step_seconds": statistics.median(kept), "steps_timed": len(kept)}
            with open(os.path.join(run_dir, "timing.json"), "w", encoding="utf-8") as f:
                json.dump(timing, f)

    evaluation = RecordingEvaluation(test_records, metric, name="test_label_accuracy")
    return [StepTimer(), evaluation]


def run_one(config, splits, metric: str) -> dict:
    """Trains one run (resuming it if it was interrupted) and returns its result.

    The run trains on `splits.train` and is scored on `splits.test` after
    every `eval_every` steps; it has no validation split (no checkpoint
    selection).
    """
    from dss_keras.data import Splits
    from dss_keras.training import train

    run_dir = config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    result = train(config, Splits(splits.train, [], splits.test), verbose=0,
                   callbacks=_callbacks(run_dir, splits.test, metric))
    with open(os.path.join(run_dir, "evals.jsonl"), encoding="utf-8") as f:
        evals = {row["step"]: row for row in map(json.loads, f)}
    with open(os.path.join(run_dir, "timing.json"), encoding="utf-8") as f:
        timing = json.load(f)
    return {
        "dataset": config.data, "method": config.mode, "fraction": config.train_fraction,
        "seed": config.seed, "steps": config.steps,
        "num_train_examples": result.metrics["data"]["num_examples"],
        "train_seconds": result.metrics["train_seconds"],
        "evals": [evals[s] for s in sorted(evals)], **timing,
        "config": config.to_dict(),
    }


def _run_name(dataset: str, method: str, fraction: float, seed: int, steps: int) -> str:
    return f"{dataset}/{method}-f{fraction:g}-s{seed}-steps{steps}"


def load_results(out: str) -> dict:
    path = os.path.join(out, "results.json")
    if not os.path.exists(path):
        return {"runs": {}}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def save_results(results: dict, out: str) -> None:
    path = os.path.join(out, "results.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)


def run_grid(specs: list[DatasetSpec], out: str, data_dir: str, multiplier: int,
             keep_run_dirs: bool) -> dict:
    """Runs every missing run of the grid, saving the results after each one."""
    from dss_keras.training import load_splits

    results = load_results(out)
    for spec in specs:
        splits = None
        for seed in spec.seeds:
            for fraction in spec.fractions:
                for method in reversed(METHODS):  # distilling step-by-step first
                    steps = spec.steps * (multiplier if method == "standard" else 1)
                    name = _run_name(spec.name, method, fraction, seed, steps)
                    if name in results["runs"]:
                        continue
                    print(f"[{time.strftime('%H:%M:%S')}] {name}", flush=True)
                    config = run_config(spec, method, fraction, seed, steps, spec.steps,
                                        os.path.join(out, "runs", name), data_dir)
                    splits = splits or load_splits(config)
                    result = run_one(config, splits, config.metric)
                    run_dir = config.run_dir
                    results["runs"][name] = result
                    save_results(results, out)
                    accuracies = ", ".join(
                        f"{e['accuracy']:.3f}@{e['step']}" for e in result["evals"])
                    print(f"    test accuracy {accuracies}; {result['train_seconds']:.0f}s, "
                          f"{result['median_step_seconds'] * 1000:.1f} ms/step", flush=True)
                    if not keep_run_dirs:
                        shutil.rmtree(run_dir, ignore_errors=True)
    return results


# --- tables and plot --------------------------------------------------------------


def _accuracy_at(run: dict, step: int) -> float | None:
    for row in run["evals"]:
        if row["step"] == step:
            return row["accuracy"]
    return None


def cells(results: dict, multiplier: int) -> list[dict]:
    """One row per (dataset, fraction, seed) holding the three figures compared."""
    by_key: dict = {}
    for run in results["runs"].values():
        key = (run["dataset"], run["fraction"], run["seed"])
        by_key.setdefault(key, {})[run["method"]] = run
    rows = []
    for (dataset, fraction, seed), runs in sorted(by_key.items()):
        dss, standard = runs.get("distill_step_by_step"), runs.get("standard")
        if dss is None or standard is None or standard["steps"] != multiplier * dss["steps"]:
            continue
        steps = dss["steps"]
        rows.append({
            "dataset": dataset, "fraction": fraction, "seed": seed, "steps": steps,
            "dss": _accuracy_at(dss, steps),
            "standard equal steps": _accuracy_at(standard, steps),
            "standard equal compute": _accuracy_at(standard, multiplier * steps),
            "step cost ratio": dss["median_step_seconds"] / standard["median_step_seconds"],
            "num_train_examples": dss["num_train_examples"],
        })
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else float("nan"))


def summarize(rows: list[dict]) -> list[dict]:
    """Mean and spread per (dataset, fraction), paired differences per budget."""
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["fraction"]), []).append(row)
    summary = []
    for (dataset, fraction), group in sorted(groups.items()):
        entry = {"dataset": dataset, "fraction": fraction, "seeds": [r["seed"] for r in group],
                 "num_train_examples": group[0]["num_train_examples"],
                 "step cost ratio": statistics.median(r["step cost ratio"] for r in group)}
        for column in ("dss", "standard equal steps", "standard equal compute"):
            entry[column] = _mean_sd([r[column] for r in group])
        for budget in BUDGETS:
            differences = [r["dss"] - r[f"standard {budget}"] for r in group]
            entry[f"difference {budget}"] = _mean_sd(differences)
            entry[f"wins {budget}"] = (sum(d > 0 for d in differences),
                                       sum(d < 0 for d in differences))
        summary.append(entry)
    return summary


def format_tables(rows: list[dict], summary: list[dict]) -> str:
    pct = lambda ms: f"{ms[0] * 100:5.1f} ± {ms[1] * 100:4.1f}"  # noqa: E731
    lines = ["Test label accuracy, %, mean ± sd over seeds "
             "(fixed budget, no checkpoint selection)",
             "",
             "| dataset | fraction (examples) | seeds | DSS | standard, equal steps "
             "| standard, equal compute | DSS - standard, equal steps (wins/losses) "
             "| DSS - standard, equal compute (wins/losses) | step cost ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in summary:
        diffs = [f"{e[f'difference {b}'][0] * 100:+5.1f} ± {e[f'difference {b}'][1] * 100:4.1f} "
                 f"({e[f'wins {b}'][0]}/{e[f'wins {b}'][1]})" for b in BUDGETS]
        lines.append(
            f"| {e['dataset']} | {e['fraction'] * 100:g}% ({e['num_train_examples']}) "
            f"| {len(e['seeds'])} | {pct(e['dss'])} | {pct(e['standard equal steps'])} "
            f"| {pct(e['standard equal compute'])} | {diffs[0]} | {diffs[1]} "
            f"| {e['step cost ratio']:.2f} |")
    lines += ["", "Paired per seed (accuracy %, DSS / standard equal steps / standard equal "
              "compute):", ""]
    for row in rows:
        lines.append(
            f"  {row['dataset']:14s} f={row['fraction']:<6g} seed={row['seed']}  "
            f"{row['dss'] * 100:5.1f} / {row['standard equal steps'] * 100:5.1f} / "
            f"{row['standard equal compute'] * 100:5.1f}   "
            f"diff {100 * (row['dss'] - row['standard equal steps']):+5.1f} / "
            f"{100 * (row['dss'] - row['standard equal compute']):+5.1f}")
    return "\n".join(lines)


def plot(rows: list[dict], summary: list[dict], path: str, multiplier: int) -> str | None:
    """Accuracy against training fraction, one panel per dataset; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib).")
        return None
    datasets = sorted({e["dataset"] for e in summary})
    figure, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4.2),
                                squeeze=False)
    series = [("dss", "distilling step-by-step", "C0", 0.0),
              ("standard equal steps", "standard, equal steps", "C1", -0.03),
              ("standard equal compute", f"standard, {multiplier}x steps", "C2", 0.03)]
    for ax, dataset in zip(axes[0], datasets):
        entries = [e for e in summary if e["dataset"] == dataset]
        fractions = [e["fraction"] for e in entries]
        for column, label, color, shift in series:
            x = [f * 2 ** shift for f in fractions]
            ax.errorbar(x, [e[column][0] * 100 for e in entries],
                        yerr=[0 if math.isnan(e[column][1]) else e[column][1] * 100
                              for e in entries],
                        color=color, marker="o", capsize=3, label=label)
            seeds = [r for r in rows if r["dataset"] == dataset]
            ax.scatter([r["fraction"] * 2 ** shift for r in seeds],
                       [r[column] * 100 for r in seeds], color=color, alpha=0.3, s=12)
        ax.set_xscale("log", base=2)
        ax.set_xticks(fractions, [f"{f * 100:g}%" for f in fractions])
        ax.set_xlabel("share of the training set")
        ax.set_ylabel("test label accuracy (%)")
        ax.set_title(f"{dataset} ({len(entries[0]['seeds'])} seeds, mean ± sd)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def report(results: dict, out: str, multiplier: int) -> None:
    rows = cells(results, multiplier)
    if not rows:
        print("No finished pair of runs yet.")
        return
    summary = summarize(rows)
    text = format_tables(rows, summary)
    print("\n" + text)
    with open(os.path.join(out, "summary.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    path = plot(rows, summary, os.path.join(out, "data_efficiency.png"), multiplier)
    if path:
        print(f"\nPlot: {path}")
    print(f"Raw results: {os.path.join(out, 'results.json')}")


def _numbers(kind: Callable, text: str) -> tuple:
    return tuple(kind(v) for v in text.split(",") if v)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/data_efficiency", help="results directory")
    parser.add_argument("--grid", choices=sorted(GRIDS), default="reduced")
    parser.add_argument("--datasets", default="word_problems,svamp",
                        help="comma-separated: word_problems, svamp, cqa")
    parser.add_argument("--fractions", help="override the grid's fractions, e.g. 0.125,0.5,1")
    parser.add_argument("--seeds", help="override the grid's seeds, e.g. 0,1,2")
    parser.add_argument("--steps", type=int, help="override the grid's steps (equal-steps budget)")
    parser.add_argument("--learning-rate", type=float,
                        help="override the grid's learning rate (both methods)")
    parser.add_argument("--compute-multiplier", type=int, default=2,
                        help="standard finetuning's steps in the equal-compute budget, "
                             "as a multiple of --steps")
    parser.add_argument("--data-dir", default=os.environ.get("DSS_DATA_DIR"),
                        help="the authors' data release (default: $DSS_DATA_DIR)")
    parser.add_argument("--keep-run-dirs", action="store_true",
                        help="keep each finished run's directory (model, logs)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args(argv)
    from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime
    from dss_keras.quiet import quiet_tensorflow

    use_fast_cpu_runtime()  # as `dss-keras` runs
    quiet_tensorflow()
    logging.basicConfig(level=logging.WARNING)
    os.makedirs(args.out, exist_ok=True)
    specs = []
    for name in args.datasets.split(","):
        spec = GRIDS[args.grid][name]
        changes = {}
        if args.fractions:
            changes["fractions"] = _numbers(float, args.fractions)
        if args.seeds:
            changes["seeds"] = _numbers(int, args.seeds)
        if args.steps:
            changes["steps"] = args.steps
        if args.learning_rate:
            changes["overrides"] = dict(spec.overrides, learning_rate=args.learning_rate)
        specs.append(dataclasses.replace(spec, **changes))
    if args.report_only:
        results = load_results(args.out)
    else:
        results = run_grid(specs, args.out, args.data_dir, args.compute_multiplier,
                           args.keep_run_dirs)
    report(results, args.out, args.compute_multiplier)
    return 0


if __name__ == "__main__":
    sys.exit(main())
