"""KerasTuner search over alpha and the training-data fraction.

`DSSHyperModel` turns a base `TrainConfig` and records into a search space:

| hyperparameter   | default choices                | what it sets                       |
|------------------|--------------------------------|------------------------------------|
| `mode`           | `distill_step_by_step`         | `TrainConfig.mode`                 |
| `alpha`          | 0.1, 0.3, 0.5, 0.7, 0.9        | only when mode is distill step-by-step |
| `train_fraction` | 0.125, 0.25, 0.5, 1.0          | the deterministic, nested subset   |
| `learning_rate`  | the base config's              | `TrainConfig.learning_rate`        |
| `seed`           | the base config's              | weights, subset and shuffle        |

A hyperparameter with one choice is `Fixed`. Every trial trains the base
config's `steps` and is scored by `val_label_accuracy`: labels generated for
the validation records and scored with the config's `metric` (the benchmark's
own, e.g. equation value for svamp), never token accuracy. The objective is
`OBJECTIVE`, `Objective("val_label_accuracy", "max")`; the trial's score is
the best value over its evaluation periods (`eval_every` steps each).

`tune()` runs a random, Bayesian (needs scikit-learn and scipy) or grid search
in a project directory:

```
<project_dir>/
  search.json               the search (base config, space, data); a rerun must match
  vocabulary.spm            the tiny backbones' vocabulary, shared by all trials
  oracle.json, tuner0.json  KerasTuner's state
  trial_<id>/trial.json     a trial's values, metrics and status (+ best weights,
                            and backup/ while it trains)
  trials.csv, trials.json   one row per trial; the JSON adds the best settings per
                            mode and fraction, and the smallest-fraction answer
  accuracy_by_fraction.png  best validation accuracy per mode against the fraction
                            (alpha of each point written next to it)
  accuracy_by_alpha.png     accuracy against alpha, one line per fraction
```

Running it again on the same directory resumes: finished trials are kept, a
trial that was interrupted is run again from its last backup, and a larger
`max_trials` adds trials. A failed trial is recorded with its error and the
search goes on (three consecutive failures stop it, as in KerasTuner).

With `target_accuracy`, the reports answer "what is the smallest training
fraction whose best setting reaches this validation accuracy?", per mode.
Use `search="grid"` (or enough trials) so that every fraction is tried.

Distributed search
------------------
KerasTuner's own chief/worker mode runs one search in several processes, on
one machine or several. Start the same command (same flags, same data, same
project directory, shared if on several machines) once per process, with

- `KERASTUNER_TUNER_ID`: `chief` for the oracle process, a distinct name
  (`tuner0`, `tuner1`, ...) for each worker;
- `KERASTUNER_ORACLE_IP` and `KERASTUNER_ORACLE_PORT`: where the chief
  listens and the workers connect.

The chief trains nothing: it serves hyperparameters over gRPC and records the
results; workers ask for a trial, train it and report it until the oracle
says stop. The chief writes the reports once every trial has ended (it waits
for running trials, so it can take up to ~20 s after the last worker is done).
The gRPC channel is neither authenticated nor encrypted: use a loopback or
private address. A worker that dies mid-trial leaves its trial running in the
chief's view; restart the whole search (it resumes from the project
directory). On one machine:

```
export KERASTUNER_ORACLE_IP=127.0.0.1 KERASTUNER_ORACLE_PORT=8470
KERASTUNER_TUNER_ID=chief  dss-keras tune --word-problems 2000 --project-dir runs/tune &
KERASTUNER_TUNER_ID=tuner0 dss-keras tune --word-problems 2000 --project-dir runs/tune &
KERASTUNER_TUNER_ID=tuner1 dss-keras tune --word-problems 2000 --project-dir runs/tune &
wait
```
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import glob
import hashlib
import json
import logging
import math
import os
import statistics
import sys
import tempfile
import typing
from typing import Any, Sequence

import keras
import keras_tuner

from dss_keras import training
from dss_keras.config import TrainConfig
from dss_keras.data import splits
from dss_keras.data.pipeline import MODES, make_dataset
from dss_keras.data.records import Record
from dss_keras.evaluation import GenerationEvaluation

logger = logging.getLogger(__name__)

OBJECTIVE = keras_tuner.Objective("val_label_accuracy", direction="max")
DEFAULT_ALPHAS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_TRAIN_FRACTIONS = (0.125, 0.25, 0.5, 1.0)
SEARCHES = ("random", "bayesian", "grid")
COLUMNS = ("trial_id", "status", "mode", "alpha", "train_fraction", "learning_rate", "seed",
           "val_label_accuracy", "train_examples", "train_steps", "message")


def _choices(name: str, values, kind, check=lambda v: True, expected: str = "") -> tuple:
    values = tuple(kind(v) for v in values)
    if not values or len(set(values)) != len(values) or not all(map(check, values)):
        raise ValueError(
            f"`{name}` must be distinct values{expected}, at least one. Received: {name}={values}"
        )
    return values


def _hp(hp: keras_tuner.HyperParameters, name: str, values: tuple):
    return hp.Fixed(name, values[0]) if len(values) == 1 else hp.Choice(name, list(values))


class _TrialInfo(keras.callbacks.Callback):
    """Logs the trial's training examples and optimizer steps, for the reports."""

    def __init__(self, num_examples: int):
        super().__init__()
        self.num_examples = num_examples

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["train_examples"] = self.num_examples
            logs["train_steps"] = int(self.model.optimizer.iterations.numpy())


class DSSHyperModel(keras_tuner.HyperModel):
    """A KerasTuner `HyperModel`: a base `TrainConfig` plus choices of alpha and fraction.

    `build(hp)` builds and compiles a `DistillStepByStep` from the trial's
    config (`trial_config(hp)`); `fit(hp, model)` trains it on the trial's
    deterministic subset (`trial_records(hp)`) for the config's `steps` and
    logs `val_label_accuracy` after every `eval_every` steps. Tiny backbones
    share one vocabulary, trained on all `train_records` (like a pretrained
    tokenizer, it does not change with the fraction), stored in
    `vocabulary_dir` (a temporary directory when `None`; `tune()` uses the
    project directory).

    Args:
        config: The base config; the tuned fields override it per trial.
        train_records: All training records; each trial takes its fraction.
        validation_records: Records that score the trials (never trained on).
        alphas: Choices of the label loss weight (distilling step-by-step).
        train_fractions: Choices of the share of `train_records`, in (0, 1].
        modes: `"distill_step_by_step"` and/or `"standard"`.
        learning_rates: Choices; `None` keeps the config's.
        seeds: Choices; `None` keeps the config's. Several seeds average out
            some noise in the reports (mean over seeds per setting).
        vocabulary_dir: Where the shared vocabulary lives.
        verbose: Keras progress bar setting of `fit`.

    Examples:

    >>> import keras_tuner
    >>> from dss_keras import testing
    >>> config = TrainConfig(hidden_dim=16, intermediate_dim=32, num_layers=1,
    ...                      num_heads=2, vocabulary_size=120, steps=2)
    >>> hypermodel = DSSHyperModel(config, testing.toy_records(40),
    ...                            testing.toy_records(8, seed=1))
    >>> hp = keras_tuner.HyperParameters()
    >>> model = hypermodel.build(hp)
    >>> sorted(hp.values)
    ['alpha', 'learning_rate', 'mode', 'seed', 'train_fraction']
    >>> hp.values["mode"], hp.values["alpha"], hp.values["train_fraction"]
    ('distill_step_by_step', 0.1, 0.125)
    >>> len(hypermodel.trial_records(hp)), model.alpha
    (5, 0.1)
    """

    def __init__(
        self,
        config: TrainConfig,
        train_records: Sequence[Record],
        validation_records: Sequence[Record],
        *,
        alphas: Sequence[float] = DEFAULT_ALPHAS,
        train_fractions: Sequence[float] = DEFAULT_TRAIN_FRACTIONS,
        modes: Sequence[str] = ("distill_step_by_step",),
        learning_rates: Sequence[float] | None = None,
        seeds: Sequence[int] | None = None,
        vocabulary_dir: str | None = None,
        verbose: str | int = 0,
    ):
        super().__init__(name="dss_keras")
        if not validation_records:
            raise ValueError("`validation_records` must not be empty: they score the trials.")
        self.config = config
        self.train_records = list(train_records)
        self.validation_records = list(validation_records)
        self.alphas = _choices("alphas", alphas, float, lambda a: 0 <= a <= 1, " in [0, 1]")
        self.train_fractions = _choices(
            "train_fractions", train_fractions, float, lambda f: 0 < f <= 1, " in (0, 1]")
        self.modes = _choices("modes", modes, str, lambda m: m in MODES, f" of {MODES}")
        self.learning_rates = _choices(
            "learning_rates", learning_rates or (config.learning_rate,), float,
            lambda r: r > 0, " above 0")
        self.seeds = _choices("seeds", seeds or (config.seed,), int)
        self.vocabulary_dir = vocabulary_dir
        self.verbose = verbose

    def search_space(self) -> dict[str, list]:
        """The choices of each hyperparameter."""
        return {
            "mode": list(self.modes), "alpha": list(self.alphas),
            "train_fraction": list(self.train_fractions),
            "learning_rate": list(self.learning_rates), "seed": list(self.seeds),
        }

    def num_combinations(self) -> int:
        """Distinct trials of the space (alpha counts only for distill step-by-step)."""
        modes = sum(len(self.alphas) if m == "distill_step_by_step" else 1 for m in self.modes)
        return modes * len(self.train_fractions) * len(self.learning_rates) * len(self.seeds)

    def trial_config(self, hp: keras_tuner.HyperParameters) -> TrainConfig:
        """The base config with the trial's values (declares them in `hp`)."""
        mode = _hp(hp, "mode", self.modes)
        alpha = None
        if "distill_step_by_step" in self.modes:
            with hp.conditional_scope("mode", ["distill_step_by_step"]):
                alpha = _hp(hp, "alpha", self.alphas)
        changes = dict(
            mode=mode,
            train_fraction=_hp(hp, "train_fraction", self.train_fractions),
            learning_rate=_hp(hp, "learning_rate", self.learning_rates),
            seed=_hp(hp, "seed", self.seeds),
        )
        if alpha is not None:
            changes["alpha"] = alpha
        return self.config.replace(**changes)

    def trial_records(self, hp: keras_tuner.HyperParameters) -> list[Record]:
        """The trial's training subset: the same for the same fraction and seed."""
        config = self.trial_config(hp)
        return splits.take_fraction(self.train_records, config.train_fraction, seed=config.seed)

    def _vocabulary_dir(self, config: TrainConfig) -> str:
        if self.vocabulary_dir is None:
            self.vocabulary_dir = tempfile.mkdtemp(prefix="dss_keras_vocabulary_")
        path = os.path.join(self.vocabulary_dir, "vocabulary.spm")
        if config.preset == "tiny" and not os.path.exists(path):
            from dss_keras import backbones

            proto = backbones.train_sentencepiece(
                training.vocabulary_texts(self.train_records, config),
                vocabulary_size=config.vocabulary_size,
            )
            tmp = f"{path}.{os.getpid()}.tmp"  # Processes of a distributed search race here.
            with open(tmp, "wb") as f:
                f.write(proto)
            os.replace(tmp, path)
        return self.vocabulary_dir

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        config = self.trial_config(hp)
        seq2seq_lm = training.build_seq2seq_lm(
            config, self.train_records, self._vocabulary_dir(config)
        )
        return training.build_model(config, seq2seq_lm)

    def fit(self, hp, model, *args, callbacks=None, verbose=None, backup_dir=None, **kwargs):
        """Trains `model` on the trial's subset; returns the Keras `History`.

        Args:
            hp: The trial's hyperparameters.
            model: The model `build(hp)` returned.
            callbacks: Callbacks from the tuner; they run after the one that
                logs `val_label_accuracy`.
            verbose: Keras progress bar setting (default: the hypermodel's).
            backup_dir: A `BackupAndRestore` directory: an interrupted trial
                resumes from it.
            **kwargs: More arguments of `model.fit`.
        """
        if args:
            raise ValueError(
                "DSSHyperModel.fit takes its data from the hypermodel; pass no "
                f"positional arguments to `search()`. Received: {len(args)} of them"
            )
        config = self.trial_config(hp)
        records = self.trial_records(hp)
        dataset, report = make_dataset(
            records, model.preprocessor, mode=config.mode, label_source=config.label_source,
            batch_size=config.batch_size, seed=config.seed, repeat=True,
        )
        logger.info("Trial data: %s", report)
        run_callbacks = [
            GenerationEvaluation(self.validation_records, config.metric,
                                 batch_size=config.eval_batch_size),
            _TrialInfo(report.num_examples),
        ]
        if backup_dir:
            run_callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
        steps_per_epoch = min(config.eval_every, config.steps)
        return model.fit(
            dataset,
            epochs=math.ceil(config.steps / steps_per_epoch),
            steps_per_epoch=steps_per_epoch,
            callbacks=run_callbacks + list(callbacks or ()),
            verbose=self.verbose if verbose is None else verbose,
            **kwargs,
        )


class _GridSearchOracle(keras_tuner.oracles.GridSearchOracle):
    """KerasTuner's grid oracle, with its place in the grid saved in `oracle.json`.

    KerasTuner 1.4 keeps the grid's order of trials and the trials whose next
    combination is pending only in memory, so a reloaded grid search fails
    (`KeyError` on the first new trial). They are saved here and rebuilt on
    reload.
    """

    def get_state(self):
        state = super().get_state()
        ordered, order = self._ordered_ids, []
        index = ordered._next_index[None]  # The list's head.
        while index is not None:
            order.append(ordered._memory[index])
            index = ordered._next_index[index]
        state["grid"] = {"order": order, "populate_next": list(self._populate_next)}
        return state

    def set_state(self, state):
        super().set_state(state)
        grid = state.get("grid", {"order": [], "populate_next": []})
        self._ordered_ids = type(self._ordered_ids)()
        for trial_id in grid["order"]:
            self._ordered_ids.insert(trial_id)
        self._populate_next = list(grid["populate_next"])


class _Tuner(keras_tuner.Tuner):
    """A `keras_tuner.Tuner` that gives each trial a backup directory."""

    def run_trial(self, trial, *args, **kwargs):
        kwargs["backup_dir"] = os.path.join(self.get_trial_dir(trial.trial_id), "backup")
        return super().run_trial(trial, *args, **kwargs)


def make_tuner(
    hypermodel: DSSHyperModel,
    project_dir: str,
    *,
    search: str = "random",
    max_trials: int | None = None,
    oracle_seed: int = 1,
) -> keras_tuner.Tuner:
    """A tuner for `hypermodel` in `project_dir`, reloading the state found there.

    Args:
        hypermodel: The search space and data.
        project_dir: The project directory (created if needed).
        search: `"random"`, `"bayesian"` or `"grid"`.
        max_trials: Trials in all, finished ones included (default: the size
            of the grid).
        oracle_seed: Seeds the random and Bayesian oracles.
    """
    if search not in SEARCHES:
        raise ValueError(f"`search` must be one of {SEARCHES}. Received: search={search!r}")
    options = dict(objective=OBJECTIVE, max_trials=max_trials or hypermodel.num_combinations(),
                   seed=oracle_seed)
    if search == "random":
        oracle = keras_tuner.oracles.RandomSearchOracle(**options)
    elif search == "grid":
        oracle = _GridSearchOracle(**options)
    else:
        try:
            oracle = keras_tuner.oracles.BayesianOptimizationOracle(**options)
        except ImportError as e:
            raise ImportError(
                "search='bayesian' needs scipy and scikit-learn: "
                "pip install 'keras-tuner[bayesian]'"
            ) from e
    directory, name = os.path.split(os.path.abspath(project_dir))
    return _Tuner(oracle=oracle, hypermodel=hypermodel, directory=directory,
                  project_name=name, overwrite=False)


def _role() -> str:
    """`"single"`, `"chief"` or `"worker"`, from KerasTuner's environment variables."""
    if "KERASTUNER_ORACLE_IP" not in os.environ:
        return "single"
    return "chief" if "chief" in os.environ.get("KERASTUNER_TUNER_ID", "") else "worker"


def _write_json(data: dict, path: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    os.replace(tmp, path)


def _fingerprint(records: Sequence[Record]) -> str:
    return hashlib.sha256("\0".join(r.id for r in records).encode("utf-8")).hexdigest()[:16]


def _check_search_file(project_dir: str, description: dict, write: bool) -> None:
    """Writes the search's description, or checks that a rerun matches it."""
    path = os.path.join(project_dir, "search.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
        changed = sorted(k for k in set(saved) | set(description)
                         if saved.get(k) != description.get(k))
        if changed:
            raise ValueError(
                f"{project_dir} holds another search ({', '.join(changed)} differ). "
                "Use a new project directory, or the same settings to resume."
            )
    elif write:
        _write_json(description, path)


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


def tune(
    hypermodel: DSSHyperModel,
    project_dir: str,
    *,
    search: str = "random",
    max_trials: int | None = None,
    oracle_seed: int = 1,
    target_accuracy: float | None = None,
    plots: bool = True,
    verbose: str | int = 0,
) -> TuningReport | None:
    """Runs (or resumes) a search and writes its reports.

    Args:
        hypermodel: The search space and data.
        project_dir: The project directory; an existing one is resumed.
        search: `"random"`, `"bayesian"` or `"grid"`.
        max_trials: Trials in all, finished ones included (default: the size
            of the grid).
        oracle_seed: Seeds the random and Bayesian oracles.
        target_accuracy: Also answer "smallest fraction reaching this".
        plots: Write the PNG plots (needs matplotlib).
        verbose: KerasTuner's display of each trial (0 or 1); the Keras
            progress bar of training is the hypermodel's `verbose`.

    Returns:
        The `TuningReport`, or `None` in a worker of a distributed search
        (the chief writes the reports).

    Examples:

    ```python
    from dss_keras.data import splits
    from dss_keras.data.word_problems import word_problems

    train, valid = splits.split_validation(word_problems(2000))
    hypermodel = DSSHyperModel(
        TrainConfig(steps=600, eval_every=300, learning_rate=3e-3),
        train, valid, alphas=[0.2, 0.5, 0.8], modes=["distill_step_by_step", "standard"])
    report = tune(hypermodel, "runs/tune", search="grid", target_accuracy=0.3)
    print(format_report(report, 0.3))
    ```
    """
    os.makedirs(project_dir, exist_ok=True)
    role = _role()
    if hypermodel.vocabulary_dir is None:
        hypermodel.vocabulary_dir = project_dir
    description = {
        "config": hypermodel.config.to_dict(),
        "space": hypermodel.search_space(),
        "search": search,
        "oracle_seed": oracle_seed,
        "train_records": _fingerprint(hypermodel.train_records),
        "validation_records": _fingerprint(hypermodel.validation_records),
    }
    _check_search_file(project_dir, description, write=role != "worker")
    tuner = make_tuner(hypermodel, project_dir, search=search, max_trials=max_trials,
                       oracle_seed=oracle_seed)
    if role != "worker":  # A worker's oracle is a gRPC client without a display.
        tuner.oracle.verbose = verbose
    tuner.search()
    if role == "worker":
        return None
    return write_reports(project_dir, target_accuracy=target_accuracy, plots=plots)


# --- reports --------------------------------------------------------------------


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
    ax.set_xlabel("share of the training set")
    ax.set_ylabel("validation label accuracy (%)")
    ax.set_title("Best validation accuracy per training fraction")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    paths.append(os.path.join(project_dir, "accuracy_by_fraction.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)

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
    ax.set_xlabel("alpha (weight of the label loss)")
    ax.set_ylabel("validation label accuracy (%)")
    ax.set_title("Distilling step-by-step: accuracy against alpha")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    figure.tight_layout()
    paths.append(os.path.join(project_dir, "accuracy_by_alpha.png"))
    figure.savefig(paths[-1], dpi=110)
    plt.close(figure)
    return paths


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
    with open(files[0] + ".tmp", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(files[0] + ".tmp", files[0])
    _write_json({
        "objective": {"name": OBJECTIVE.name, "direction": OBJECTIVE.direction},
        "trials": rows, "best": best, "best_by_fraction": by_fraction,
        "target_accuracy": target_accuracy, "smallest_fraction": smallest,
    }, files[1])
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


# --- command line ---------------------------------------------------------------

_TUNED = ("alpha", "train_fraction", "mode", "learning_rate", "seed", "run_dir")


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dss-keras tune",
        description="KerasTuner search over alpha and the training-data fraction.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    search = parser.add_argument_group("search")
    search.add_argument("--project-dir", default="runs/tune",
                        help="project directory; an existing one is resumed")
    search.add_argument("--search", choices=SEARCHES, default="random")
    search.add_argument("--max-trials", type=int, help="trials in all (default: the whole grid)")
    search.add_argument("--alphas", type=_floats, default=list(DEFAULT_ALPHAS))
    search.add_argument("--train-fractions", type=_floats, default=list(DEFAULT_TRAIN_FRACTIONS))
    search.add_argument("--modes", type=lambda s: s.split(","), default=["distill_step_by_step"],
                        help="distill_step_by_step and/or standard, comma-separated")
    search.add_argument("--learning-rates", type=_floats,
                        default=[TrainConfig.learning_rate])
    search.add_argument("--seeds", type=lambda s: [int(v) for v in s.split(",")], default=[0])
    search.add_argument("--oracle-seed", type=int, default=1)
    search.add_argument("--target-accuracy", type=float,
                        help="report the smallest fraction whose best setting reaches it")
    search.add_argument("--report-only", action="store_true",
                        help="write the reports of an existing project; train nothing")
    search.add_argument("--no-plots", action="store_true")
    data = parser.add_argument_group("data (one of --benchmark, --word-problems, --train-file)")
    data.add_argument("--benchmark", choices=("cqa", "svamp", "esnli", "anli1"),
                      help="a benchmark of the paper's data release (train and valid splits)")
    data.add_argument("--data-dir", help="the folder that holds <benchmark>/ (with --benchmark)")
    data.add_argument("--word-problems", type=int, metavar="N",
                      help="N generated word problems (the quickstart's task)")
    config = parser.add_argument_group("base config (TrainConfig fields)")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name in _TUNED:
            continue
        kind = hints[field.name] if hints[field.name] in (int, float) else str
        config.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind,
                            default=field.default, help=f"(default: {field.default!r})")
    return parser


def _load_records(args, config: TrainConfig) -> tuple[list[Record], list[Record]]:
    if args.benchmark:
        from dss_keras.data.official import load_benchmark

        if not args.data_dir:
            raise SystemExit("--benchmark needs --data-dir, the folder that holds "
                             f"{args.benchmark}/ of the paper's data release.")
        return (load_benchmark(args.benchmark, args.data_dir, "train"),
                load_benchmark(args.benchmark, args.data_dir, "valid"))
    if args.word_problems:
        from dss_keras.data.word_problems import word_problems

        return splits.split_validation(word_problems(args.word_problems),
                                       config.validation_fraction or splits.VALIDATION_FRACTION)
    data = training.load_data_splits(config)
    if not data.validation:
        raise SystemExit("tune needs validation records: --validation-file or "
                         "--validation-fraction above 0.")
    return data.train, data.validation


def main(argv: Sequence[str] | None = None) -> int:
    """`dss-keras tune`: run or resume a search; print and write its reports."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.report_only:
        report = write_reports(args.project_dir, target_accuracy=args.target_accuracy,
                               plots=not args.no_plots)
        print(format_report(report, args.target_accuracy))
        return 0
    names = {f.name for f in dataclasses.fields(TrainConfig)} - set(_TUNED)
    values: dict[str, Any] = {k: v for k, v in vars(args).items() if k in names}
    if args.benchmark and values["metric"] == TrainConfig.metric:
        values["metric"] = args.benchmark
    config = TrainConfig.from_dict(values)
    train_records, validation_records = _load_records(args, config)
    hypermodel = DSSHyperModel(
        config, train_records, validation_records, alphas=args.alphas,
        train_fractions=args.train_fractions, modes=args.modes,
        learning_rates=args.learning_rates, seeds=args.seeds,
        verbose="auto" if args.verbose else 0,
    )
    report = tune(hypermodel, args.project_dir, search=args.search, max_trials=args.max_trials,
                  oracle_seed=args.oracle_seed, target_accuracy=args.target_accuracy,
                  plots=not args.no_plots, verbose=1)
    if report is not None:
        print(format_report(report, args.target_accuracy))
    return 0


if __name__ == "__main__":
    sys.exit(main())
