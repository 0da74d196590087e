"""Labels of reduced-precision and one-pass exports against the float32 export, on trained runs.

For each trained run directory, exports its model at float32, bfloat16 and
int8 (and, where the run's data has a closed label set, the float32 graph's
`choose_label` signature: CQA's choices, NLI's labels), answers the run's
held-out test records through each SavedModel, and reports per side:

- `labels_changed`: the share of labels that differ from the float32 export's
  labels of the same signature (greedy `serving_default`, or `choose_label`);
- `labels_differ_from_greedy` (`choose_label` sides): against float32 greedy;
- `accuracy`: under the run's metric (exact match, or the equation's value).

    python benchmarks/serving_agreement.py runs/quickstart/seed-0/distill_step_by_step \\
        runs/cqa-tiny

`serving_latency.py --agreement-runs ...` runs this and puts `labels_changed`
beside each side's latency.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

PRECISIONS = ("float32", "bfloat16", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="trained run directories")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json-out", help="write the results here as JSON")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = {run_dir: run_agreement(run_dir, args.batch_size) for run_dir in args.run_dirs}
    for run_dir, sides in results.items():
        print(format_run(run_dir, sides))
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump(results, file, indent=2)
    return results


def run_agreement(run_dir: str, batch_size: int = 64) -> dict:
    """Each side's labels on the run's test records: `{side: {labels_changed, accuracy, ...}}`."""
    import keras

    import dss_keras.model  # noqa: F401  (registers the classes)
    from dss_keras.config import TrainConfig
    from dss_keras.evaluation import score
    from dss_keras.export import export_for_serving, load_and_predict
    from dss_keras.label_scorer import label_set_for_data
    from dss_keras.training import load_splits

    config = TrainConfig.load(os.path.join(run_dir, "config.json"))
    records = load_splits(config).test
    texts = [record.input for record in records]
    references = [record.label for record in records]
    model = keras.models.load_model(os.path.join(run_dir, "model.keras"))
    label_set = label_set_for_data(config.data)
    labels, seconds = {}, {}
    with tempfile.TemporaryDirectory(prefix="dss_agreement_") as folder:
        for precision in PRECISIONS:
            path = export_for_serving(model, os.path.join(folder, precision),
                                      precision=precision, label_set=label_set)
            signatures = {precision: "serving_default"}
            if label_set is not None:
                signatures[f"choose_label {precision}"] = "choose_label"
            for side, signature in signatures.items():
                started = time.perf_counter()
                labels[side] = load_and_predict(path, texts, signature, batch_size=batch_size)
                seconds[side] = time.perf_counter() - started
    sides = {}
    for side, predicted in labels.items():
        result = score(config.metric, predicted, references)
        baseline = labels["choose_label float32" if side.startswith("choose_label") else "float32"]
        changed = sum(a != b for a, b in zip(predicted, baseline))
        sides[side] = {
            "labels_changed": changed / len(texts),
            "num_changed": changed,
            "num_examples": len(texts),
            "accuracy": result.accuracy,
            "seconds": seconds[side],
        }
        if side.startswith("choose_label"):
            differ = sum(a != b for a, b in zip(predicted, labels["float32"]))
            sides[side]["labels_differ_from_greedy"] = differ / len(texts)
    if label_set is not None:
        # How often greedy generation spelled one of the row's candidates at all.
        candidates = [[c.decode("utf-8") for c in row]
                      for row in label_set.candidates(texts).to_list()]
        sides["float32"]["num_valid_labels"] = sum(
            label in row for label, row in zip(labels["float32"], candidates))
    return sides


def format_run(run_dir: str, sides: dict) -> str:
    """A table: each side's labels changed (against float32), accuracy and time."""
    first = next(iter(sides.values()))
    lines = [f"{run_dir} ({first['num_examples']} test records):",
             f"  {'side':24s}{'labels changed':>17s}{'accuracy':>10s}{'not greedy':>12s}"
             f"{'seconds':>9s}"]
    for side, row in sides.items():
        differ = row.get("labels_differ_from_greedy")
        lines.append(f"  {side:24s}{row['num_changed']:>8d} ({row['labels_changed']:6.2%})"
                     f"{row['accuracy']:>10.2%}"
                     f"{'' if differ is None else f'{differ:.2%}':>12s}{row['seconds']:>9.1f}")
    if "num_valid_labels" in first:
        lines.append(f"  float32 greedy spelled one of the row's candidates "
                     f"{first['num_valid_labels']} times of {first['num_examples']}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
