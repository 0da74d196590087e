"""`DSSHyperModel`: a search space over alpha and the data fraction, built on the one fit path."""

from __future__ import annotations

import os
import tempfile
from typing import Sequence

import keras
import keras_tuner

from dss_keras import training
from dss_keras.config import DEFAULT_ALPHAS, DEFAULT_TRAIN_FRACTIONS, MODES, TrainConfig
from dss_keras.data.records import Record
from dss_keras.data.sources import Splits
from dss_keras.run_dir import VOCABULARY

OBJECTIVE = keras_tuner.Objective("val_label_accuracy", direction="max")


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

    A trial is the run `dss-keras train` makes with the trial's config
    (`trial_config(hp)`: the base config with the trial's values):
    `build(hp)` is `dss_keras.training.build_model` and `fit(hp, model)` is
    `dss_keras.training.fit`, which trains on the trial's deterministic
    subset for the config's `steps` and logs `val_label_accuracy` after every
    `eval_every` steps. Tiny backbones share one vocabulary, by the rule of
    `dss_keras.vocabulary` (the whole training split), stored in
    `vocabulary_dir` (a temporary directory when `None`; `tune()` uses the
    project directory).

    Args:
        config: The base config; the tuned fields override it per trial.
        splits: The records (`dss_keras.data.load`): each trial trains on
            its fraction of `splits.train` and is scored on
            `splits.validation` (never trained on).
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
    >>> from dss_keras.data import Splits
    >>> splits = Splits(testing.toy_records(40), testing.toy_records(8, seed=1), [])
    >>> hypermodel = DSSHyperModel(config, splits)
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
        splits: Splits,
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
        if not splits.validation:
            raise ValueError(
                "Tuning needs validation records: they score the trials. Give the data a "
                "validation split (a validation file, or validation_fraction above 0)."
            )
        self.config = config
        self.splits = splits
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
        return training.training_records(self.trial_config(hp), self.splits.train)

    def vocabulary_path(self) -> str:
        """The shared vocabulary file of the tiny backbones."""
        if self.vocabulary_dir is None:
            self.vocabulary_dir = tempfile.mkdtemp(prefix="dss_keras_vocabulary_")
        return os.path.join(self.vocabulary_dir, VOCABULARY)

    def build(self, hp: keras_tuner.HyperParameters) -> keras.Model:
        return training.build_model(self.trial_config(hp), self.splits.train,
                                    self.vocabulary_path())

    def fit(self, hp, model, *args, callbacks=None, verbose=None, backup_dir=None, **kwargs):
        """Trains `model` with `dss_keras.training.fit`; returns the Keras `History`.

        Args:
            hp: The trial's hyperparameters.
            model: The model `build(hp)` returned.
            callbacks: Callbacks from the tuner; they run after the one that
                logs `val_label_accuracy`.
            verbose: Keras progress bar setting (default: the hypermodel's).
            backup_dir: A backup directory (`dss_keras.backup`): an interrupted trial
                resumes from it.
        """
        if args or kwargs:
            raise ValueError(
                "DSSHyperModel.fit takes its data and settings from the hypermodel; pass "
                f"no arguments to `search()`. Received: {len(args)} positional, "
                f"{sorted(kwargs)}"
            )
        config = self.trial_config(hp)
        records = self.trial_records(hp)
        examples = sum(r.training_label(config.label_source) is not None for r in records)
        result = training.fit(
            config, self.splits, model=model, backup_dir=backup_dir,
            callbacks=[_TrialInfo(examples), *(callbacks or ())],
            verbose=self.verbose if verbose is None else verbose,
        )
        history = result.keras_history
        history.history = result.history  # every period, also those before a resume
        return history
