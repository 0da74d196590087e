"""The multi-task tf.data pipeline: records in, padded batches of both tasks out.

Each element of the dataset is `(x, y, sample_weight)`, each a dict keyed by
task. `x[task]` holds KerasHub's `encoder_token_ids`, `encoder_padding_mask`,
`decoder_token_ids` and `decoder_padding_mask`; `y[task]` the target ids;
`sample_weight[task]` is 1 on real target tokens and 0 on padding, and 0 on the
whole rationale of an example that has no rationale. Both tasks of an example
always sit in the same row of the same batch.

Tokenization runs in the graph (`cache_tokens` keeps the tokens after the
first pass), examples are bucketed by length so that a batch is padded
only as far as its longest member, the order is shuffled deterministically
from a seed, and the next batches are prefetched. For XLA, `bounded_shapes`
pads each batch further, to one of a few lengths, so that a jit-compiled step
compiles once per length and not once per batch.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np
import tensorflow as tf

from dss_keras.config import tasks_of
from dss_keras.data.records import Record, check_label_source
from dss_keras.preprocessor import MultiTaskPreprocessor

logger = logging.getLogger(__name__)

_MODEL_INPUTS = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "decoder_token_ids",
    "decoder_padding_mask",
)


@dataclasses.dataclass(frozen=True)
class PipelineReport:
    """What went into a dataset, and what was left out of which task.

    Attributes:
        num_records: Records given.
        num_examples: Records used (those with a label from `label_source`).
        missing_label: Records left out because they have no label from
            `label_source`: the teacher gave none (`"llm"`), or the record
            only has a teacher label (`"gt"`).
        without_rationale: Used records that train the label task only.
    """

    num_records: int
    num_examples: int
    missing_label: int
    without_rationale: int

    def __str__(self) -> str:
        return (
            f"{self.num_examples} of {self.num_records} records used; "
            f"{self.missing_label} without a label from the label source left out; "
            f"{self.without_rationale} train the label task only (no rationale)"
        )


def _default_boundaries(limit: int) -> list[int]:
    boundaries, length = [], 16
    while length < limit:
        boundaries.append(length)
        length *= 2
    return boundaries


def _bounded_lengths(limit: int) -> list[int]:
    """Powers of two from 8 below `limit`, then `limit`: the lengths of `bounded_shapes`."""
    return [length for length in (2**k for k in range(3, 31)) if length < limit] + [limit]


def _pad_to_bounded_lengths(batch: dict, limits: dict, padding_values: dict) -> dict:
    """Pads the encoder and decoder tensors to the next of `_bounded_lengths`.

    Both tasks' encoder inputs (one text, two prefixes) get the same length,
    the longer task's bound: fewer distinct batch shapes, each compiled once.
    """

    def padded(tensor, length, value):
        return tf.pad(tensor, [[0, 0], [0, length - tf.shape(tensor)[1]]],
                      constant_values=tf.cast(value, tensor.dtype))

    def bound(limit, actual):
        lengths = tf.constant(_bounded_lengths(limit))
        return tf.reduce_min(tf.boolean_mask(lengths, lengths >= actual))

    encoder_keys = ("encoder_token_ids", "encoder_padding_mask")
    decoder_keys = ("decoder_token_ids", "decoder_padding_mask", "target_ids", "target_weights")
    encoder_length = tf.reduce_max([
        bound(limits[task]["encoder"], tf.shape(tensors[encoder_keys[0]])[1])
        for task, tensors in batch.items()])
    out = {}
    for task, tensors in batch.items():
        length = {"encoder": encoder_length,
                  "decoder": bound(limits[task]["decoder"], tf.shape(tensors[decoder_keys[0]])[1])}
        out[task] = {key: padded(tensors[key], length[side], padding_values[task][key])
                     for side, keys in (("encoder", encoder_keys), ("decoder", decoder_keys))
                     for key in keys}
    return out


def _to_model_batch(batch: dict):
    x = {task: {k: batch[task][k] for k in _MODEL_INPUTS} for task in batch}
    y = {task: batch[task]["target_ids"] for task in batch}
    weights = {task: batch[task]["target_weights"] for task in batch}
    return x, y, weights


def make_dataset(
    records: Sequence[Record],
    preprocessor: MultiTaskPreprocessor,
    *,
    mode: str = "distill_step_by_step",
    label_source: str = "gt",
    batch_size: int = 32,
    shuffle: bool = True,
    seed: int = 0,
    repeat: bool = False,
    bucket_boundaries: Sequence[int] | None = None,
    drop_remainder: bool = False,
    cache_tokens: bool = False,
    bounded_shapes: bool = False,
) -> tuple[tf.data.Dataset, PipelineReport]:
    """Builds the batched dataset of one or both tasks from records.

    Args:
        records: The examples.
        preprocessor: Usually `model.preprocessor` of a `DistillStepByStep`.
        mode: `"distill_step_by_step"` (label and rationale tasks) or
            `"standard"` (label task only).
        label_source: `"gt"` trains on human labels, `"llm"` on the
            teacher's; records without such a label are left out.
        batch_size: Examples per batch (each carries both tasks).
        shuffle: Shuffle the examples (deterministically, from `seed`) every
            pass.
        seed: Seed of the shuffle.
        repeat: Repeat forever (for step-based training).
        bucket_boundaries: Length boundaries (in tokens of the longest
            sequence of an example) of the length buckets; `None` picks
            powers of two from 16, `[]` turns bucketing off.
        drop_remainder: Drop batches smaller than `batch_size`.
        cache_tokens: Tokenize each example once and keep the tokens in
            memory, instead of tokenizing again on every pass (no faster at
            the t5-small shape on CPU, see BENCHMARKS.md).
        bounded_shapes: Pad each batch's encoder and decoder lengths up to
            the next power of two (or the length budget), both tasks' encoder
            inputs to the same one, as a jit-compiled (XLA) train step wants:
            it compiles once per shape, and there are few.

    Returns:
        `(dataset, report)`.

    Examples:

    >>> from dss_keras import testing
    >>> from dss_keras.model import DistillStepByStep
    >>> model = DistillStepByStep(testing.tiny_seq2seq_lm())
    >>> dataset, report = make_dataset(testing.toy_records(10), model.preprocessor,
    ...                                batch_size=4, shuffle=False)
    >>> x, y, weights = next(iter(dataset))
    >>> sorted(x), x["label"]["encoder_token_ids"].shape[0]
    (['label', 'rationale'], 4)
    >>> print(report)
    10 of 10 records used; 0 without a label from the label source left out; 0 train the label task only (no rationale)
    """
    tasks = tasks_of(mode)
    check_label_source(label_source)
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be at least 1. Received: batch_size={batch_size}")

    inputs, labels, rationales, has_rationale = [], [], [], []
    missing_label = 0
    for record in records:
        label = record.training_label(label_source)
        if label is None:
            missing_label += 1
            continue
        inputs.append(record.input)
        labels.append(label)
        rationales.append(record.rationale or "")
        has_rationale.append(float(record.rationale is not None))
    if not inputs:
        raise ValueError(
            f"No record has a label for label_source={label_source!r}: "
            f"{len(records)} records, {missing_label} without one."
        )
    report = PipelineReport(
        num_records=len(records),
        num_examples=len(inputs),
        missing_label=missing_label,
        without_rationale=int(len(inputs) - sum(has_rationale)) if "rationale" in tasks else 0,
    )
    logger.info("Pipeline: %s", report)

    features = {
        "input": tf.constant(inputs, tf.string),
        "label": tf.constant(labels, tf.string),
    }
    if "rationale" in tasks:
        features["rationale"] = tf.constant(rationales, tf.string)
        features["has_rationale"] = tf.constant(np.array(has_rationale, np.float32))
    dataset = tf.data.Dataset.from_tensor_slices(features)

    def tokenize(dataset):
        return dataset.map(lambda f: preprocessor.pack_example(f, tasks),
                           num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    if cache_tokens:
        # The shuffle below draws the same order from the seed whatever it shuffles.
        dataset = tokenize(dataset).cache()
    if shuffle:
        dataset = dataset.shuffle(len(inputs), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        dataset = dataset.repeat()
    if not cache_tokens:
        dataset = tokenize(dataset)
    padding_values = {
        task: {
            "encoder_token_ids": preprocessor.pad_token_id,
            "encoder_padding_mask": 0,
            "decoder_token_ids": preprocessor.pad_token_id,
            "decoder_padding_mask": 0,
            "target_ids": preprocessor.pad_token_id,
            "target_weights": 0.0,
        }
        for task in tasks
    }
    if bucket_boundaries is None:
        longest = preprocessor.max_input_length + max(
            preprocessor.max_target_length(t) for t in tasks
        )
        bucket_boundaries = _default_boundaries(longest)
    if bucket_boundaries:
        dataset = dataset.bucket_by_sequence_length(
            element_length_func=lambda e: _example_length(e, tasks),
            bucket_boundaries=list(bucket_boundaries),
            bucket_batch_sizes=[batch_size] * (len(bucket_boundaries) + 1),
            padding_values=padding_values,
            drop_remainder=drop_remainder,
        )
    else:
        dataset = dataset.padded_batch(
            batch_size, padding_values=padding_values, drop_remainder=drop_remainder
        )
    if bounded_shapes:
        limits = {task: {"encoder": preprocessor.max_input_length,
                         "decoder": preprocessor.max_target_length(task)} for task in tasks}
        dataset = dataset.map(lambda b: _pad_to_bounded_lengths(b, limits, padding_values),
                              num_parallel_calls=tf.data.AUTOTUNE)
    dataset = dataset.map(_to_model_batch, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE), report


def _example_length(example: dict, tasks: Sequence[str]):
    """Tokens of an example's longest encoder input plus its longest target."""
    encoder = tf.shape(example["label"]["encoder_token_ids"])[0]
    target = tf.reduce_max(
        tf.stack([tf.shape(example[t]["target_ids"])[0] for t in tasks])
    )
    return encoder + target
