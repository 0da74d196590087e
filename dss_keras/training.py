"""One training run, from a `TrainConfig` to a run directory.

A run directory holds:

```
config.json         the resolved TrainConfig
vocabulary.spm      the SentencePiece model (tiny backbones trained on the fly)
backup/             Keras BackupAndRestore state while training (a crash resumes)
logs/               TensorBoard logs
model.keras         the trained DistillStepByStep (weights and optimizer state)
metrics.json        losses, label accuracies, the data report and wall time
```

Running the same config on an existing run directory resumes it (or returns
the finished results); a different config there is an error, never a
deletion.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from typing import Sequence

import keras

from dss_keras import backbones
from dss_keras.config import TrainConfig
from dss_keras.data import splits
from dss_keras.data.pipeline import make_dataset
from dss_keras.data.records import Record, read_records
from dss_keras.evaluation import GenerationEvaluation, evaluate_labels
from dss_keras.model import DistillStepByStep

logger = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class DataSplits:
    train: list[Record]
    validation: list[Record]
    test: list[Record]


def load_data_splits(config: TrainConfig) -> DataSplits:
    """Reads the config's files; carves validation out of train when there is no file.

    `train_fraction` is applied to the training records after the validation
    split is taken, so every fraction is validated on the same records.
    """
    if config.train_file is None:
        raise ValueError("`train_file` is required when no records are passed.")
    train = read_records(config.train_file)
    if config.validation_file:
        validation = read_records(config.validation_file)
    elif config.validation_fraction > 0:
        train, validation = splits.split_validation(train, config.validation_fraction)
    else:
        validation = []
    test = read_records(config.test_file) if config.test_file else []
    return DataSplits(train, validation, test)


def vocabulary_texts(records: Sequence[Record], config: TrainConfig) -> list[str]:
    """The text a vocabulary trained on the fly learns from."""
    texts = [config.label_prefix + config.rationale_prefix]
    for r in records:
        texts += [r.input] + [t for t in (r.label, r.rationale, r.llm_label) if t]
    return texts


def build_seq2seq_lm(config: TrainConfig, records: Sequence[Record], run_dir: str):
    """A tiny T5 with a vocabulary trained on `records`, or a KerasHub preset."""
    dtype = None if config.dtype_policy == "float32" else config.dtype_policy
    if config.preset != "tiny":
        return backbones.from_preset(config.preset, dtype=dtype)
    vocabulary_path = os.path.join(run_dir, "vocabulary.spm")
    if os.path.exists(vocabulary_path):
        with open(vocabulary_path, "rb") as f:
            proto = f.read()
    else:
        proto = backbones.train_sentencepiece(
            vocabulary_texts(records, config), vocabulary_size=config.vocabulary_size
        )
        with open(vocabulary_path + ".tmp", "wb") as f:
            f.write(proto)
        os.replace(vocabulary_path + ".tmp", vocabulary_path)
    return backbones.tiny_t5(
        proto=proto,
        hidden_dim=config.hidden_dim,
        num_layers=config.num_layers,
        num_heads=config.num_heads,
        intermediate_dim=config.intermediate_dim,
        dropout=config.dropout,
        seed=config.seed,
        dtype=dtype,
    )


def build_model(config: TrainConfig, seq2seq_lm) -> DistillStepByStep:
    """Wraps and compiles the model as the config says."""
    model = DistillStepByStep(
        seq2seq_lm,
        alpha=config.alpha,
        mode=config.mode,
        label_prefix=config.label_prefix,
        rationale_prefix=config.rationale_prefix,
        max_input_length=config.max_input_length,
        max_label_length=config.max_label_length,
        max_rationale_length=config.max_rationale_length,
    )
    optimizer = keras.optimizers.AdamW(
        learning_rate=config.learning_rate,
        weight_decay=config.weight_decay,
        gradient_accumulation_steps=(
            config.gradient_accumulation_steps if config.gradient_accumulation_steps > 1 else None
        ),
    )
    model.compile(optimizer=optimizer, jit_compile=config.jit_compile_value)
    return model


def _prepare_run_dir(config: TrainConfig) -> None:
    path = os.path.join(config.run_dir, "config.json")
    if os.path.exists(path):
        saved = TrainConfig.load(path)
        if saved != config:
            changed = sorted(
                k for k, v in config.to_dict().items() if saved.to_dict()[k] != v
            )
            raise ValueError(
                f"{config.run_dir} holds a run with another config (fields "
                f"{', '.join(changed)} differ). Use a new run directory, or the "
                "same config to resume."
            )
        logger.info("Resuming the run in %s", config.run_dir)
        return
    os.makedirs(config.run_dir, exist_ok=True)
    config.save(path)


def _write_json(data: dict, path: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def train(
    config: TrainConfig,
    train_records: Sequence[Record] | None = None,
    validation_records: Sequence[Record] | None = None,
    test_records: Sequence[Record] | None = None,
    *,
    verbose: str | int = "auto",
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> TrainResult:
    """Trains, evaluates and saves one run.

    Records passed in win over the config's files. Training runs
    `config.steps` optimizer steps (rounded up to whole evaluation periods of
    `eval_every` steps); after every period the validation losses and the
    generated-label accuracy (`val_label_accuracy`) are logged and the state
    is backed up.

    Args:
        config: The run's configuration.
        train_records, validation_records, test_records: Records to use
            instead of the config's files.
        verbose: Keras progress bar setting.
        callbacks: Extra Keras callbacks.

    Returns:
        A `TrainResult`.

    Examples:

    >>> import tempfile
    >>> from dss_keras import testing
    >>> config = TrainConfig(run_dir=tempfile.mkdtemp(), steps=2, eval_every=2,
    ...                      batch_size=4, vocabulary_size=120, hidden_dim=16,
    ...                      intermediate_dim=32, num_layers=1, num_heads=2,
    ...                      max_label_length=4, max_rationale_length=8)
    >>> result = train(config, testing.toy_records(12), testing.toy_records(4, seed=1),
    ...                verbose=0)
    >>> sorted(result.metrics["validation"])
    ['accuracy', 'num_examples', 'num_unparsable']
    """
    _prepare_run_dir(config)
    metrics_path = os.path.join(config.run_dir, "metrics.json")
    model_path = os.path.join(config.run_dir, "model.keras")
    if os.path.exists(metrics_path) and os.path.exists(model_path):
        logger.info("%s is finished; loading its model and metrics", config.run_dir)
        with open(metrics_path, encoding="utf-8") as f:
            metrics = json.load(f)
        return TrainResult(config.run_dir, keras.models.load_model(model_path), metrics)

    if train_records is None:
        data = load_data_splits(config)
    else:
        data = DataSplits(list(train_records), list(validation_records or []),
                          list(test_records or []))
    train_set = splits.take_fraction(data.train, config.train_fraction, seed=config.seed)

    seq2seq_lm = build_seq2seq_lm(config, train_set, config.run_dir)
    model = build_model(config, seq2seq_lm)
    dataset, report = make_dataset(
        train_set,
        model.preprocessor,
        mode=config.mode,
        label_source=config.label_source,
        batch_size=config.batch_size,
        seed=config.seed,
        repeat=True,
    )
    logger.info("Training data: %s", report)
    validation_dataset = generation_callback = None
    run_callbacks = []
    if data.validation:
        validation_dataset, _ = make_dataset(
            data.validation, model.preprocessor, mode=config.mode,
            label_source="gt", batch_size=config.eval_batch_size, shuffle=False,
        )
        generation_callback = GenerationEvaluation(
            data.validation, config.metric, batch_size=config.eval_batch_size
        )
        run_callbacks.append(generation_callback)
    steps_per_epoch = min(config.eval_every, config.steps)
    epochs = math.ceil(config.steps / steps_per_epoch)
    run_callbacks += [
        keras.callbacks.BackupAndRestore(os.path.join(config.run_dir, "backup")),
        keras.callbacks.TensorBoard(os.path.join(config.run_dir, "logs")),
        *callbacks,
    ]
    start = time.perf_counter()
    history = model.fit(
        dataset,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=validation_dataset,
        callbacks=run_callbacks,
        verbose=verbose,
    )
    train_seconds = time.perf_counter() - start

    metrics = {
        "config": config.to_dict(),
        "data": dataclasses.asdict(report),
        "steps_trained": epochs * steps_per_epoch,
        "train_seconds": train_seconds,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }
    if data.validation:
        result = generation_callback.last_result or evaluate_labels(
            model, data.validation, config.metric, config.eval_batch_size
        )
        metrics["validation"] = result.to_dict()
    if data.test:
        metrics["test"] = evaluate_labels(
            model, data.test, config.metric, config.eval_batch_size
        ).to_dict()
    model.save(model_path + ".tmp.keras")
    os.replace(model_path + ".tmp.keras", model_path)
    _write_json(metrics, metrics_path)
    return TrainResult(config.run_dir, model, metrics)
