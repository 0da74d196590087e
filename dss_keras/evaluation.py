"""Label accuracy by generation: batched greedy decoding, then the task's metric."""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, Sequence

import keras

from dss_keras import metrics as metrics_lib
from dss_keras.data.records import Record

logger = logging.getLogger(__name__)

# A metric is a benchmark name of `dss_keras.metrics` ("exact_match" or
# "equation" for your own data) or a callable `(predictions, references) -> Score`.
Metric = str | Callable[[Sequence[str], Sequence[str]], "metrics_lib.Score"]


@dataclasses.dataclass(frozen=True)
class EvaluationResult:
    """Label accuracy of a model on a set of records.

    Attributes:
        accuracy: Share of records whose generated label matches.
        num_examples: Records evaluated.
        num_unparsable: Predictions the metric could not read (counted wrong).
        predictions: The generated labels, in record order.
    """

    accuracy: float
    num_examples: int
    num_unparsable: int
    predictions: tuple[str, ...]

    def to_dict(self) -> dict:
        return {
            "accuracy": self.accuracy,
            "num_examples": self.num_examples,
            "num_unparsable": self.num_unparsable,
        }


def score(metric: Metric, predictions: Sequence[str], references: Sequence[str]):
    """Applies a metric name or callable; returns a `dss_keras.metrics.Score`."""
    if callable(metric):
        return metric(predictions, references)
    return metrics_lib.score_predictions(metric, predictions, references)


def check_references(metric: Metric, records: Sequence[Record]) -> None:
    """Checks that every gold label can be scored by `metric`, before any generation.

    Raises:
        ValueError: naming the record's file and line, e.g. a SVAMP gold
            equation without a value.
    """
    if callable(metric) or metric not in metrics_lib.EQUATION_BENCHMARKS:
        return
    for record in records:
        if record.label is not None and metrics_lib.evaluate_arithmetic(record.label) is None:
            raise ValueError(
                f'{record.where()}: field "label": the gold equation {record.label!r} has no '
                f"value, so metric {metric!r} cannot score it"
            )


def evaluate_labels(
    model,
    records: Sequence[Record],
    metric: Metric = "exact_match",
    batch_size: int = 64,
) -> EvaluationResult:
    """Generates a label for every record and scores it against the gold label.

    Args:
        model: A `DistillStepByStep` (anything with `predict_labels`).
        records: The evaluation records; their human `label` is the reference.
        metric: See `Metric`.
        batch_size: Generation batch size.

    Examples:

    >>> from dss_keras import testing
    >>> from dss_keras.model import DistillStepByStep
    >>> model = DistillStepByStep(testing.tiny_seq2seq_lm(), max_label_length=3)
    >>> result = evaluate_labels(model, testing.toy_records(4))
    >>> result.num_examples, 0.0 <= result.accuracy <= 1.0
    (4, True)
    """
    labelled = [r for r in records if r.label is not None]
    if len(labelled) < len(records):
        logger.warning("%d of %d records have no gold label and are not scored.",
                       len(records) - len(labelled), len(records))
        if not labelled:
            raise ValueError("No record has a gold label to score against: evaluate on "
                             "records with labels (e.g. a --validation-file).")
        records = labelled
    check_references(metric, records)
    predictions = model.predict_labels([r.input for r in records], batch_size=batch_size)
    result = score(metric, predictions, [r.label for r in records])
    return EvaluationResult(
        accuracy=float(result.accuracy),
        num_examples=len(records),
        num_unparsable=int(result.num_unparsable),
        predictions=tuple(predictions),
    )


class GenerationEvaluation(keras.callbacks.Callback):
    """Adds `val_label_accuracy` (generated labels, the task's metric) to the logs.

    Runs at the end of every `every` epochs (and the last one), so that
    `History`, TensorBoard, checkpoints and KerasTuner see the figure that
    matters rather than token accuracy. Place it before callbacks that read
    the logs.

    Args:
        records: Validation records.
        metric: See `Metric`.
        every: Evaluate every this many epochs.
        batch_size: Generation batch size.
        name: The log key.
    """

    def __init__(
        self,
        records: Sequence[Record],
        metric: Metric = "exact_match",
        every: int = 1,
        batch_size: int = 64,
        name: str = "val_label_accuracy",
    ):
        super().__init__()
        self.records = list(records)
        self.metric = metric
        self.every = every
        self.batch_size = batch_size
        self.name = name
        self.last_result: EvaluationResult | None = None

    def on_epoch_end(self, epoch, logs=None):
        is_last = self.params and epoch + 1 == self.params.get("epochs")
        if (epoch + 1) % self.every and not is_last:
            return
        self.last_result = evaluate_labels(
            self.model, self.records, self.metric, self.batch_size
        )
        if logs is not None:
            logs[self.name] = self.last_result.accuracy
        logger.info("epoch %d: %s=%.4f", epoch + 1, self.name, self.last_result.accuracy)
