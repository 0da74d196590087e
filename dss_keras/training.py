"""The one path from a config and records to a trained model.

```
config + Splits --build_model--> compiled DistillStepByStep --fit--> FitResult
                                                   train = run directory + fit + test + save
```

- `build_model(config, train_records, vocabulary_path)`: the seq2seq LM (a
  KerasHub preset, or a tiny T5 whose vocabulary follows the rule of
  `dss_keras.vocabulary`), wrapped in `DistillStepByStep` and compiled with
  the config's optimizer.
- `fit(config, splits, ...)`: the training subset (`train_fraction` of
  `splits.train`, `seed`), the pipeline, the validation callbacks
  (`val_label_accuracy` by generation), an optional backup for crash resume,
  and `model.fit` for `steps` steps in periods of `eval_every` steps.
- `train(config, splits)`: `fit` inside a run directory (see `run_dir`),
  then test accuracy, `model.keras` and `metrics.json`.

`dss-keras train`, the recipes (`dss_keras.experiments`), the tuner
(`dss_keras.tuning`), the quickstart and the benchmarks all go through these
functions, so a run is the same run whichever of them starts it. That is the
module's one job, and why it runs past 450 lines: every caller's run is built here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from typing import TYPE_CHECKING, Sequence

import keras

from dss_keras import backbones, interrupts, vocabulary
from dss_keras.backup import Backup, BackupCallback
from dss_keras.config import TINY_PRESET, TrainConfig
from dss_keras.data import splits as splitting
from dss_keras.data.records import Record
from dss_keras.data.sources import Splits, load
from dss_keras.evaluation import GenerationEvaluation, check_references, evaluate_labels
from dss_keras.model import DistillStepByStep

if TYPE_CHECKING:  # the pipeline (TensorFlow's tf.data) loads when `fit` feeds a model
    from dss_keras.data.pipeline import PipelineReport

logger = logging.getLogger(__name__)


def load_splits(config: TrainConfig) -> Splits:
    """The records `config` names (`data` or `train_file`), via `dss_keras.data.load`."""
    if config.source is None:
        raise ValueError(
            "No training data: set `train_file` (--train-file FILE) or `data` "
            "(--data word_problems, cqa, ...)."
        )
    return load(config.source, data_dir=config.data_dir,
                validation_file=config.validation_file, test_file=config.test_file,
                validation_fraction=config.validation_fraction)


def build_seq2seq_lm(config: TrainConfig, train_records: Sequence[Record],
                     vocabulary_path: str):
    """A KerasHub preset, or a tiny T5 on the vocabulary at `vocabulary_path`."""
    dtype = None if config.dtype_policy == "float32" else config.dtype_policy
    if config.preset != TINY_PRESET:
        return backbones.from_preset(config.preset, dtype=dtype)
    proto = vocabulary.load_or_train(
        vocabulary_path, train_records, vocabulary_size=config.vocabulary_size,
        label_prefix=config.label_prefix, rationale_prefix=config.rationale_prefix,
    )
    return backbones.tiny_t5(
        proto=proto, hidden_dim=config.hidden_dim, num_layers=config.num_layers,
        num_heads=config.num_heads, intermediate_dim=config.intermediate_dim,
        dropout=config.dropout, seed=config.seed, dtype=dtype,
    )


def trained_steps(config: TrainConfig) -> int:
    """Batches `fit` trains: `steps` rounded up to whole periods of `eval_every`.

    Examples:

    >>> trained_steps(TrainConfig(steps=1000, eval_every=300))
    1200
    """
    period = min(config.eval_every, config.steps)
    return math.ceil(config.steps / period) * period


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    """The config's AdamW: schedule, epsilon, weight decay, clipping, accumulation.

    - `lr_schedule="linear"` decays `learning_rate` linearly to 0 over the
      optimizer steps `fit` runs (`trained_steps(config)` batches divided by
      `gradient_accumulation_steps`), with no warm-up;
    - `clip_global_norm` > 0 clips the global batch's gradient to that norm;
    - `dtype_policy="mixed_float16"` wraps it in a `LossScaleOptimizer`
      (dynamic loss scaling; float16 gradients underflow without it).

    With `dss_keras.experiments.PAPER_SETTINGS` this is the optimizer of the
    authors' runs (the Hugging Face Trainer's defaults).

    Examples:

    >>> optimizer = make_optimizer(TrainConfig(lr_schedule="linear", steps=100,
    ...                                        learning_rate=1e-3, clip_global_norm=1.0))
    >>> round(float(optimizer.learning_rate), 6), optimizer.global_clipnorm
    (0.001, 1.0)
    >>> type(make_optimizer(TrainConfig(dtype_policy="mixed_float16"))).__name__
    'LossScaleOptimizer'
    """
    from dss_keras import optimizers

    accumulation = config.gradient_accumulation_steps
    learning_rate = config.learning_rate
    if config.lr_schedule == "linear":
        learning_rate = optimizers.LinearDecay(
            config.learning_rate, max(1, trained_steps(config) // accumulation),
            gradient_accumulation_steps=accumulation)
    optimizer = optimizers.AdamW(
        learning_rate=learning_rate,
        weight_decay=config.weight_decay,
        epsilon=config.adam_epsilon,
        epsilon_placement=config.adam_epsilon_placement,
        global_clipnorm=config.clip_global_norm or None,
        gradient_accumulation_steps=accumulation if accumulation > 1 else None,
    )
    if config.dtype_policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


# The TrainConfig fields that are `DistillStepByStep` arguments of the same name.
_MODEL_FIELDS = ("alpha", "mode", "label_prefix", "rationale_prefix", "max_input_length",
                 "max_label_length", "max_rationale_length", "rematerialize", "examples_per_row")


def build_model(config: TrainConfig, train_records: Sequence[Record],
                vocabulary_path: str | None, strategy=None, *, seq2seq_lm=None,
                **model_options) -> DistillStepByStep:
    """The compiled `DistillStepByStep` of `config`, created under the strategy's scope.

    `dss-keras train`, the recipes, the tuner and the benchmarks build their
    models here, so that what a benchmark measures is what `train` runs.

    Args:
        config: The run's configuration.
        train_records: The whole training split (it trains a tiny model's
            vocabulary; see `dss_keras.vocabulary`).
        vocabulary_path: Where the tiny model's vocabulary is stored.
        strategy: A `tf.distribute.Strategy` (on JAX a `keras.distribution`
            one); `make_strategy(config.strategy)` when `None`. The model, its
            metrics and its optimizer are created under its scope.
        seq2seq_lm: A seq2seq LM to wrap instead of the config's preset (a
            benchmark's shape); the caller creates it under the scope.
        **model_options: `DistillStepByStep` arguments that are not config
            fields (a benchmark's variants of the fast path).
    """
    from dss_keras import strategies

    strategy = strategy or strategies.make_strategy(config.strategy)
    with strategy.scope():
        if seq2seq_lm is None:
            seq2seq_lm = build_seq2seq_lm(config, train_records, vocabulary_path)
        options = {name: getattr(config, name) for name in _MODEL_FIELDS}
        model = DistillStepByStep(seq2seq_lm, **{**options, **model_options})
        model.compile(optimizer=make_optimizer(config), jit_compile=config.jit_compile_value)
    return model


@dataclasses.dataclass
class FitResult:
    """What `fit` produced.

    Attributes:
        model: The trained model.
        history: The logs of every evaluation period by key, over every
            resume of the run (one value per period, each once).
        keras_history: The Keras `History` of this call's `model.fit`.
        report: What the training pipeline used (`PipelineReport`).
        steps: Optimizer steps trained in all (`steps` rounded up to whole
            periods of `eval_every`).
        train_seconds: Training wall time, over every resume of the run.
        validation: The last `val_label_accuracy` evaluation, if any.
    """

    model: DistillStepByStep
    history: dict[str, list[float]]
    keras_history: keras.callbacks.History
    report: PipelineReport
    steps: int
    train_seconds: float
    validation: object = None


class _StopAtCtrlC(keras.callbacks.Callback):
    """Ends `fit` at the next step after a Ctrl-C, even one Python dropped
    (`dss_keras.interrupts`); the backup keeps what was trained."""

    def on_train_batch_end(self, batch, logs=None):
        interrupts.raise_if_interrupted()

    def on_test_batch_end(self, batch, logs=None):
        interrupts.raise_if_interrupted()

    def on_epoch_end(self, epoch, logs=None):
        interrupts.raise_if_interrupted()


def training_records(config: TrainConfig, train_records: Sequence[Record]) -> list[Record]:
    """The subset that trains: `train_fraction` of the split, picked by `seed`."""
    return splitting.take_fraction(train_records, config.train_fraction, seed=config.seed)


def check_trainable(config: TrainConfig, splits: Splits) -> list[Record]:
    """The training subset, once checked to hold what `config` trains on.

    Nothing is built or written before this passes.

    Raises:
        ValueError: when no training record has a label from `label_source`;
            when distilling step-by-step finds no rationale at all (the run
            stops rather than train the label task alone under the name of
            the method: use `mode="standard"` for that); when a validation
            label cannot be scored by `metric`.
    """
    records = training_records(config, splits.train)
    where = config.source or "the training records"
    usable = [r for r in records if r.training_label(config.label_source) is not None]
    if not usable:
        kind = "gold" if config.label_source == "gt" else "teacher"
        raise ValueError(
            f"{where}: none of the {len(records)} training records has a {kind} label "
            f"(label_source={config.label_source!r}); nothing would train."
        )
    if config.mode == "distill_step_by_step" and not any(r.rationale for r in usable):
        raise ValueError(
            f"{where}: mode 'distill_step_by_step' learns from rationales, and none of the "
            f"{len(usable)} training records has one. Train with mode 'standard' (labels "
            "only), or give the records the teacher's rationales."
        )
    check_references(config.metric, splits.validation)
    return records


def fit(
    config: TrainConfig,
    splits: Splits,
    *,
    model: DistillStepByStep | None = None,
    vocabulary_path: str | None = None,
    backup_dir: str | None = None,
    log_dir: str | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    verbose: str | int = "auto",
    strategy=None,
    keep_backup: bool = False,
) -> FitResult:
    """Trains a model as `config` says on `splits`; returns it with its history.

    Under a `tf.distribute` strategy the model, its optimizer, its metrics and
    the pipeline are created under the strategy's scope; the pipeline batches
    `batch_size` examples (the global batch), which Keras splits over the
    replicas, and multi-worker runs shard it by data. Only the chief
    (`dss_keras.strategies.is_chief`) writes the backup and the logs; every
    worker restores from the backup, which must then be on a filesystem they
    all see.

    Args:
        config: The run's configuration.
        splits: The records; `train` is the whole training split, of which
            `config.train_fraction` trains. With validation records, their
            losses and `val_label_accuracy` are logged every `eval_every` steps.
        model: A model from `build_model(config, ...)`; built when `None`.
        vocabulary_path: Where a tiny model's vocabulary is stored when the
            model is built here (a temporary file when `None`).
        backup_dir: A backup directory (`dss_keras.backup`): an interrupted
            fit resumes where its last backup (every `eval_every` steps) left
            off, data order included. It is removed once the fit is done,
            unless `keep_backup`.
        log_dir: A TensorBoard log directory.
        callbacks: More Keras callbacks; they run after the evaluation, so
            they see `val_label_accuracy`.
        verbose: Keras progress bar setting.
        strategy: A `tf.distribute.Strategy`; by default the one of `model`,
            else `dss_keras.strategies.make_strategy(config.strategy)`.

    Examples:

    >>> from dss_keras.data import load
    >>> config = TrainConfig(steps=2, eval_every=2, batch_size=4, vocabulary_size=120,
    ...                      hidden_dim=16, intermediate_dim=32, num_layers=1, num_heads=2,
    ...                      max_label_length=4, max_rationale_length=8)
    >>> result = fit(config, load("word_problems:20", validation_fraction=0.2), verbose=0)
    >>> result.steps, result.report.num_examples, 0 <= result.validation.accuracy <= 1
    (2, 16, True)
    """
    from dss_keras import strategies
    from dss_keras.data.pipeline import make_dataset

    if strategy is None:
        strategy = (strategies.strategy_of(model)
                    if model is not None and config.strategy == "default"
                    else strategies.make_strategy(config.strategy))
    chief = strategies.is_chief(strategy)
    records = check_trainable(config, splits)
    if model is None:
        if vocabulary_path is None or not chief:
            # A worker trains the same vocabulary (same records, same settings) on its own.
            import tempfile

            vocabulary_path = os.path.join(tempfile.mkdtemp(prefix="dss_keras_"),
                                           "vocabulary.spm")
        model = build_model(config, splits.train, vocabulary_path, strategy)
    elif strategies.strategy_of(model) is not strategy:
        raise ValueError(
            "The model was not created under the strategy fit trains with: build it with "
            "`build_model(config, ..., strategy=strategy)`. Received: "
            f"strategy={type(strategy).__name__}, "
            f"model.distribute_strategy={type(strategies.strategy_of(model)).__name__}")
    steps_per_epoch = min(config.eval_every, config.steps)
    epochs = trained_steps(config) // steps_per_epoch
    backup = restored = None
    if backup_dir:
        store = Backup(backup_dir)
        with strategy.scope():  # every worker restores from the chief's backup
            restored = store.restore(model)
        backup = BackupCallback(store, restored, write=chief)
    initial_epoch = restored.epoch if restored else 0
    with strategy.scope():
        # A jit-compiled (XLA) step compiles once per batch shape: keep the shapes few.
        dataset, report = make_dataset(
            records, model.preprocessor, mode=config.mode, label_source=config.label_source,
            batch_size=config.batch_size, seed=config.seed, repeat=True,
            bounded_shapes=bool(model.jit_compile),
        )
    # The order of the batches depends on the seed only (not on how many iterators Keras
    # makes), so a resumed fit goes on with the batches the interrupted one had not reached.
    dataset = _shard_by_data(dataset.skip(initial_epoch * steps_per_epoch))
    logger.info("Training data: %s", report)
    run_callbacks: list = [_StopAtCtrlC()]
    validation_dataset = evaluation = None
    if splits.validation:
        with strategy.scope():
            validation_dataset, _ = make_dataset(
                splits.validation, model.preprocessor, mode=config.mode, label_source="gt",
                batch_size=config.eval_batch_size, shuffle=False,
                bounded_shapes=bool(model.jit_compile),
            )
        validation_dataset = _shard_by_data(validation_dataset)
        evaluation = GenerationEvaluation(splits.validation, config.metric,
                                          batch_size=config.eval_batch_size)
        run_callbacks.append(evaluation)
    if backup is not None:
        run_callbacks.append(backup)
    if log_dir and chief:
        run_callbacks.append(keras.callbacks.TensorBoard(log_dir))
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Keras says "Your input ran out of data" at the end of each validation pass
        # over a dataset of unknown length (bucketed batches); the training data
        # repeats, so the warning never means more here.
        warnings.filterwarnings("ignore", message="Your input ran out of data",
                                category=UserWarning)
        keras_history = model.fit(
            dataset, epochs=epochs, steps_per_epoch=steps_per_epoch,
            initial_epoch=initial_epoch, validation_data=validation_dataset,
            callbacks=[*run_callbacks, *callbacks], verbose=verbose,
        )
    if backup is not None:
        history, train_seconds = backup.history, backup.train_seconds
        if chief and not keep_backup:
            backup.backup.remove()
    else:
        history = {k: [float(v) for v in vs] for k, vs in keras_history.history.items()}
        train_seconds = time.perf_counter() - start
    validation = None
    if evaluation is not None:
        validation = evaluation.last_result or evaluate_labels(
            model, splits.validation, config.metric, config.eval_batch_size)
    return FitResult(model, history, keras_history, report, epochs * steps_per_epoch,
                     train_seconds, validation)


def _shard_by_data(dataset):
    """`dataset`, split between multi-worker workers by example (it reads no files)."""
    import tensorflow as tf

    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA)
    return dataset.with_options(options)


def accuracy_figure(metrics: dict, split: str) -> str:
    """`"<split> accuracy 0.5000 (200 examples)"` from a run's metrics, or says there is none.

    Examples:

    >>> accuracy_figure({"test": {"accuracy": 0.5, "num_examples": 200}}, "test")
    'test accuracy 0.5000 (200 examples)'
    >>> accuracy_figure({}, "validation")
    'validation: none'
    """
    part = metrics.get(split)
    if not part:
        return f"{split}: none"
    return f"{split} accuracy {part['accuracy']:.4f} ({part['num_examples']} examples)"


def summary(metrics: dict) -> str:
    """What a finished run's `metrics.json` says, in two lines a person reads.

    Examples:

    >>> print(summary({"config": {"mode": "standard", "preset": "tiny", "metric": "svamp"},
    ...                "steps_trained": 400, "train_seconds": 31.6,
    ...                "history": {"loss": [0.9, 0.5], "label_loss": [0.9, 0.5]},
    ...                "test": {"accuracy": 0.25, "num_examples": 300}}))
    standard, preset tiny: 400 steps in 32 s, final loss 0.500 (label 0.500)
    scored by svamp: validation: none, test accuracy 0.2500 (300 examples)
    """
    config, history = metrics["config"], metrics["history"]
    losses = [f"{task} {history[f'{task}_loss'][-1]:.3f}" for task in ("label", "rationale")
              if history.get(f"{task}_loss")]
    return (f"{config['mode']}, preset {config['preset']}: {metrics['steps_trained']} steps in "
            f"{metrics['train_seconds']:.0f} s, final loss {history['loss'][-1]:.3f} "
            f"({', '.join(losses)})\n"
            f"scored by {config['metric']}: {accuracy_figure(metrics, 'validation')}, "
            f"{accuracy_figure(metrics, 'test')}")


@dataclasses.dataclass
class TrainResult:
    """What a run produced.

    Attributes:
        run_dir: The run directory.
        model: The trained model.
        metrics: The content of `metrics.json`.
    """

    run_dir: str
    model: DistillStepByStep
    metrics: dict


def train(
    config: TrainConfig,
    splits: Splits | None = None,
    *,
    verbose: str | int = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Trains, evaluates and saves one run in `config.run_dir`.

    Args:
        config: The run's configuration.
        splits: The records; read with `load_splits(config)` when `None`.
        verbose: Keras progress bar setting.
        callbacks: Extra Keras callbacks.

    Returns:
        A `TrainResult`. A finished run directory returns its saved result
        (a damaged `model.keras` is rebuilt from the backup the run kept).

    Raises:
        ValueError: before anything is written, for data that cannot train
            (`check_trainable`), a run directory that is a file, or one that
            holds a started run with another config.
        dss_keras.run_lock.RunDirectoryBusy: when another process trains in
            the run directory (one left by a process that died is taken over).
        OSError: naming the directory, when the disk has no room for a
            backup or the model; a rerun once there is room resumes.

    Examples:

    >>> import tempfile
    >>> config = TrainConfig(data="word_problems:16", validation_fraction=0.25,
    ...                      run_dir=tempfile.mkdtemp(), steps=2, eval_every=2,
    ...                      batch_size=4, vocabulary_size=120, hidden_dim=16,
    ...                      intermediate_dim=32, num_layers=1, num_heads=2,
    ...                      max_label_length=4, max_rationale_length=8)
    >>> result = train(config, verbose=0)
    >>> sorted(result.metrics["validation"]), result.metrics["steps_trained"]
    (['accuracy', 'num_examples', 'num_unparsable'], 2)
    """
    from dss_keras import run_dir as runs
    from dss_keras import strategies
    from dss_keras.run_lock import RunLock

    strategy = strategies.make_strategy(config.strategy)
    chief = strategies.is_chief(strategy)  # Other workers write nothing to the run directory.
    config = config.resolved()
    lock = RunLock(config.run_dir)
    try:
        if chief and os.path.isdir(config.run_dir):
            lock.acquire()  # before anything is read: another trainer may be writing
        if runs.status(config) == runs.FINISHED:
            model, metrics = runs.load_finished(config.run_dir)
            return TrainResult(config.run_dir, model, metrics)
        splits = splits or load_splits(config)
        check_trainable(config, splits)  # before anything is written
        if chief:
            os.makedirs(config.run_dir, exist_ok=True)
            lock.acquire()
            runs.claim(config)
        return _train_in(config, splits, strategy, chief, verbose, callbacks)
    finally:
        lock.release()


def _train_in(config: TrainConfig, splits: Splits, strategy, chief: bool,
              verbose: str | int, callbacks) -> TrainResult:
    """`train` once the run directory is claimed (and locked)."""
    from dss_keras import run_dir as runs

    result = fit(
        config, splits,
        vocabulary_path=os.path.join(config.run_dir, runs.VOCABULARY),
        backup_dir=os.path.join(config.run_dir, runs.BACKUP),
        log_dir=os.path.join(config.run_dir, runs.LOGS),
        callbacks=callbacks, verbose=verbose, strategy=strategy,
        keep_backup=True,  # the newest generation stays: model.keras can be rebuilt from it
    )
    metrics = {
        "config": config.to_dict(),
        "data": dataclasses.asdict(result.report),
        "steps_trained": result.steps,
        "train_seconds": result.train_seconds,
        "history": result.history,
    }
    if result.validation is not None:
        metrics["validation"] = result.validation.to_dict()
    if splits.test:
        metrics["test"] = evaluate_labels(
            result.model, splits.test, config.metric, config.eval_batch_size).to_dict()
    interrupts.raise_if_interrupted()  # a run Ctrl-C reached is never marked finished
    if chief:
        runs.save_finished(config.run_dir, result.model, metrics)
    return TrainResult(config.run_dir, result.model, metrics)
