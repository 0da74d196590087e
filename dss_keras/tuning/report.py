"""Reports of a tuning project: trials.csv/json, the best setting per fraction, plots."""

from __future__ import annotations

import csv
import dataclasses
import glob
import io
import logging
import os
import statistics
from typing import Sequence

import keras_tuner

from dss_keras.files import write_json, write_text
from dss_keras.tuning.hypermodel import OBJECTIVE

logger = logging.getLogger(__name__)

COLUMNS = ("trial_id", "status", "mode", "alpha", "train_fraction", "learning_rate", "seed",
           "val_label_accuracy", "train_examples", "train_steps", "message")


def _last_line(text: str | None) -> str | None:
    """The last line of a traceback: the error itself."""
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else None


def read_trials(project_dir: str) -> list[dict]:
    """One row per trial of a project directory (see `COLUMNS`), in trial order."""
    rows = []
    for path in glob.glob(os.path.join(project_dir, "trial_*", "trial.json")):
        trial = keras_tuner.engine.trial.Trial.load(path)
        values = trial.hyperparameters.values
        completed = trial.status == "COMPLETED"

        def metric(name, trial=trial):
            return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None

        rows.append({
            "trial_id": trial.trial_id,
            "status": trial.status,
            "mode": values.get("mode"),
            "alpha": values.get("alpha") if values.get("mode") != "standard" else None,
            "train_fraction": values.get("train_fraction"),
            "learning_rate": values.get("learning_rate"),
            "seed": values.get("seed"),
            "val_label_accuracy": trial.score if completed else None,
            "train_examples": None if metric("train_examples") is None
            else int(metric("train_examples")),
            "train_steps": None if metric("train_steps") is None else int(metric("train_steps")),
            "message": _last_line(trial.message),
        })
    return sorted(rows, key=lambda r: int(r["trial_id"]))


def best_by_fraction(rows: Sequence[dict]) -> list[dict]:
    """The best setting (alpha, learning rate) of each mode at each fraction.

    Settings are compared by their mean accuracy over seeds; completed trials
    only.

    Examples:

    >>> rows = [dict(status="COMPLETED", mode="distill_step_by_step", alpha=a,
    ...              train_fraction=f, learning_rate=1e-3, seed=0, val_label_accuracy=v)
    ...         for a, f, v in [(0.1, 0.5, 0.6), (0.9, 0.5, 0.7), (0.1, 1.0, 0.8)]]
    >>> [(e["train_fraction"], e["alpha"], e["val_label_accuracy"])
    ...  for e in best_by_fraction(rows)]
    [(0.5, 0.9, 0.7), (1.0, 0.1, 0.8)]
    """
    settings: dict = {}
    for row in rows:
        if row["status"] == "COMPLETED" and row["val_label_accuracy"] is not None:
            key = (row["mode"], row["train_fraction"], row["alpha"], row["learning_rate"])
            settings.setdefault(key, []).append(row["val_label_accuracy"])
    best: dict = {}
    for (mode, fraction, alpha, rate), accuracies in settings.items():
        entry = {"mode": mode, "train_fraction": fraction, "alpha": alpha,
                 "learning_rate": rate, "val_label_accuracy": statistics.fmean(accuracies),
                 "num_seeds": len(accuracies)}
        current = best.get((mode, fraction))
        if current is None or entry["val_label_accuracy"] > current["val_label_accuracy"]:
            best[(mode, fraction)] = entry
    return [best[key] for key in sorted(best)]


def smallest_fraction(
    rows: Sequence[dict], target_accuracy: float, mode: str | None = None
) -> dict | None:
    """The smallest fraction whose best setting reaches `target_accuracy`.

    Args:
        rows: Trial rows (`read_trials`).
        target_accuracy: The validation accuracy to reach, in [0, 1].
        mode: Only this mode's trials; `None` for any mode.

    Returns:
        The `best_by_fraction` entry, or `None` when no fraction tried reaches it.

    Examples:

    >>> rows = [dict(status="COMPLETED", mode="distill_step_by_step", alpha=0.5,
    ...              train_fraction=f, learning_rate=1e-3, seed=0, val_label_accuracy=v)
    ...         for f, v in [(0.125, 0.4), (0.25, 0.72), (0.5, 0.71), (1.0, 0.9)]]
    >>> smallest_fraction(rows, 0.7)["train_fraction"]
    0.25
    >>> smallest_fraction(rows, 0.95) is None
    True
    """
    reaching = [e for e in best_by_fraction(rows)
                if (mode is None or e["mode"] == mode)
                and e["val_label_accuracy"] >= target_accuracy]
    return min(reaching, key=lambda e: (e["train_fraction"], -e["val_label_accuracy"]),
               default=None)


def plot_trials(rows: Sequence[dict], project_dir: str,
                target_accuracy: float | None = None) -> list[str]:
    """Writes `accuracy_by_fraction.png` and `accuracy_by_alpha.png`; needs matplotlib."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if r["status"] == "COMPLETED" and r["val_label_accuracy"] is not None]
    modes = sorted({r["mode"] for r in done})
    fractions = sorted({r["train_fraction"] for r in done})
    paths = []

    figure, ax = plt.subplots(figsize=(6, 4.2))
    for i, mode in enumerate(modes):
        color = f"C{i}"
        trials = [r for r in done if r["mode"] == mode]
        ax.scatter([r["train_fraction"] for r in trials],
                   [r["val_label_accuracy"] * 100 for r in trials], color=color, alpha=0.25, s=14)
        best = [e for e in best_by_fraction(done) if e["mode"] == mode]
        ax.plot([e["train_fraction"] for e in best], [e["val_label_accuracy"] * 100 for e in best],
                color=color, marker="o", label=f"{mode} (best setting)")
        for e in best:
            if e["alpha"] is not None:
                ax.annotate(f"α={e['alpha']:g}",
                            (e["train_fraction"], e["val_label_accuracy"] * 100),
                            textcoords="offset points", xytext=(4, 6), fontsize=8, color=color)
    if target_accuracy is not None:
        ax.axhline(target_accuracy * 100, color="gray", linestyle=":", label="target")
    ax.set_xscale("log", base=2)
    ax.margins(x=0.12, y=0.12)
    if fractions:
        ax.set_xticks(fractions, [f"{f * 100:g}%" for f in fractions])
    paths.append(_save(figure, ax, os.path.join(project_dir, "accuracy_by_fraction.png"),
                       "share of the training set",
                       "Best validation accuracy per training fraction"))

    figure, ax = plt.subplots(figsize=(6, 4.2))
    for i, fraction in enumerate(fractions):
        color = f"C{i}"
        trials = [r for r in done if r["train_fraction"] == fraction and r["alpha"] is not None]
        by_alpha: dict = {}
        for r in trials:
            by_alpha.setdefault(r["alpha"], []).append(r["val_label_accuracy"] * 100)
        alphas = sorted(by_alpha)
        ax.scatter([r["alpha"] for r in trials], [r["val_label_accuracy"] * 100 for r in trials],
                   color=color, alpha=0.3, s=14)
        if alphas:
            ax.plot(alphas, [statistics.fmean(by_alpha[a]) for a in alphas], color=color,
                    marker="o", label=f"{fraction * 100:g}% of train")
        standard = [r["val_label_accuracy"] * 100 for r in done
                    if r["train_fraction"] == fraction and r["mode"] == "standard"]
        if standard:
            ax.axhline(statistics.fmean(standard), color=color, linestyle="--",
                       label=f"standard, {fraction * 100:g}%")
    paths.append(_save(figure, ax, os.path.join(project_dir, "accuracy_by_alpha.png"),
                       "alpha (weight of the label loss)",
                       "Distilling step-by-step: accuracy against alpha"))
    return paths


def _save(figure, ax, path: str, xlabel: str, title: str) -> str:
    """Labels, grid and legend of an accuracy plot; writes it to `path`."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("validation label accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_reports(project_dir: str, *, target_accuracy: float | None = None,
                  plots: bool = True) -> TuningReport:
    """Writes `trials.csv`, `trials.json` and the plots of a project directory.

    Plots are skipped, with a warning, when matplotlib is not installed.
    """
    rows = read_trials(project_dir)
    done = [r for r in rows if r["status"] == "COMPLETED" and r["val_label_accuracy"] is not None]
    best = max(done, key=lambda r: r["val_label_accuracy"], default=None)
    by_fraction = best_by_fraction(rows)
    smallest = {}
    if target_accuracy is not None:
        smallest = {mode: smallest_fraction(rows, target_accuracy, mode)
                    for mode in sorted({r["mode"] for r in rows})}
    files = [os.path.join(project_dir, "trials.csv"), os.path.join(project_dir, "trials.json")]
    table = io.StringIO()
    writer = csv.DictWriter(table, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    write_text(files[0], table.getvalue())
    write_json(files[1], {
        "objective": {"name": OBJECTIVE.name, "direction": OBJECTIVE.direction},
        "trials": rows, "best": best, "best_by_fraction": by_fraction,
        "target_accuracy": target_accuracy, "smallest_fraction": smallest,
    })
    if plots and done:
        try:
            files += plot_trials(rows, project_dir, target_accuracy)
        except ImportError:
            logger.warning("matplotlib is not installed: no plots (pip install matplotlib).")
    return TuningReport(project_dir, rows, best, by_fraction, smallest, files)


def format_report(report: TuningReport, target_accuracy: float | None = None) -> str:
    """A plain-text summary: best trial, best setting per fraction, smallest fraction."""
    statuses = [r["status"] for r in report.rows]
    lines = [f"{len(statuses)} trials: " + ", ".join(
        f"{statuses.count(s)} {s.lower()}" for s in sorted(set(statuses)))]
    if report.best:
        b = report.best
        lines.append(f"best: trial {b['trial_id']}, {b['mode']}, alpha {b['alpha']}, "
                     f"fraction {b['train_fraction']:g}: val_label_accuracy "
                     f"{b['val_label_accuracy']:.4f}")
    lines.append(f"{'mode':22s}{'fraction':>9s}{'alpha':>7s}{'lr':>9s}{'seeds':>6s}"
                 f"{'accuracy':>10s}")
    for e in report.by_fraction:
        alpha = "-" if e["alpha"] is None else f"{e['alpha']:g}"
        lines.append(f"{e['mode']:22s}{e['train_fraction']:>9g}{alpha:>7s}"
                     f"{e['learning_rate']:>9.2g}{e['num_seeds']:>6d}"
                     f"{e['val_label_accuracy']:>10.4f}")
    for mode, entry in report.smallest.items():
        answer = ("no fraction tried reaches it" if entry is None else
                  f"{entry['train_fraction']:g} (accuracy {entry['val_label_accuracy']:.4f})")
        lines.append(f"smallest fraction reaching {target_accuracy}, {mode}: {answer}")
    lines += [f"wrote {path}" for path in report.files]
    return "\n".join(lines)




@dataclasses.dataclass
class TuningReport:
    """The trials of a project and what the reports say about them.

    Attributes:
        project_dir: The project directory.
        rows: One dict per trial (`COLUMNS`), in trial order.
        best: The row of the best completed trial, or `None`.
        by_fraction: The best setting per mode and fraction (`best_by_fraction`).
        smallest: Mode -> the smallest fraction reaching `target_accuracy`
            (a `by_fraction` entry, or `None`); empty without a target.
        files: The files written.
    """

    project_dir: str
    rows: list[dict]
    best: dict | None
    by_fraction: list[dict]
    smallest: dict[str, dict | None]
    files: list[str]
