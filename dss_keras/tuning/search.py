"""Searches with KerasTuner: the tuner, resume on the same project directory, distribution.

See the package docstring (`dss_keras.tuning`) for the project layout and for
running one search in several processes.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import keras_tuner

from dss_keras.config import SEARCHES
from dss_keras.data.records import Record
from dss_keras.files import write_json
from dss_keras.tuning.hypermodel import OBJECTIVE, DSSHyperModel
from dss_keras.tuning.report import TuningReport, write_reports



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
        write_json(path, description)


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
    from dss_keras.data import load

    hypermodel = DSSHyperModel(
        TrainConfig(steps=600, eval_every=300, learning_rate=3e-3),
        load("word_problems"), alphas=[0.2, 0.5, 0.8],
        modes=["distill_step_by_step", "standard"])
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
        "train_records": _fingerprint(hypermodel.splits.train),
        "validation_records": _fingerprint(hypermodel.splits.validation),
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


