"""Packing: several examples of a batch in one row, with per-example attention masks.

A padded batch `[batch, length]` spends the encoder's and the decoder's work
on padding too. `pack_task` moves the real tokens of a task's batch into
fewer, longer rows (`examples_per_row` examples each) and builds attention
masks that let a token see only tokens of its own example:

- encoder self-attention: same example;
- decoder self-attention: same example (the T5 layer adds the causal mask);
- cross-attention: the decoder tokens of an example see its encoder tokens.

T5 needs nothing else: its relative position bias depends only on the
distance between two positions, which packing keeps within an example, so
each example's hidden states are those of the padded batch (to rounding;
`tests/tf_fast_path/test_packing.py` checks outputs and gradients). BART's absolute
position embeddings would change, so only T5 is packed.

Rows are filled in a "snake" order of decreasing example length (row 0, 1,
..., R-1, then R-1, ..., 0, ...), which keeps the rows' lengths close, so
that little padding remains at the end of the rows. Masks are built from
each example's token count (`padding_mask` rows are ones then zeros, as
KerasHub's preprocessors make them).

Examples:

>>> import numpy as np
>>> inputs = {"encoder_token_ids": np.array([[5, 6, 1, 0], [7, 1, 0, 0], [8, 9, 4, 1]]),
...           "encoder_padding_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]]),
...           "decoder_token_ids": np.array([[0, 3], [0, 0], [0, 2]]),
...           "decoder_padding_mask": np.array([[1, 1], [1, 0], [1, 1]])}
>>> packed = pack_task(inputs, examples_per_row=2)
>>> packed.encoder_token_ids.numpy().tolist()  # the longest alone, the other two together
[[8, 9, 4, 1, 0], [5, 6, 1, 7, 1]]
>>> packed.decoder_token_ids.numpy().tolist()
[[0, 2, 0], [0, 3, 0]]
>>> packed.cross_attention_mask.numpy()[1].astype(int).tolist()  # row 1: first example, then the second
[[1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 1]]
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import tensorflow as tf

from dss_keras.tf_fast_path.options import check_examples_per_row, check_length_multiple


@dataclasses.dataclass(frozen=True)
class PackedTask:
    """A task's batch packed into rows (see the module docstring).

    Attributes:
        encoder_token_ids, decoder_token_ids: `[rows, length]` packed ids
            (0 after the last example of a row).
        encoder_attention_mask: `[rows, source, source]`, True where a token
            may attend.
        decoder_attention_mask: `[rows, target, target]`, without the causal
            part (the T5 decoder layer adds it).
        cross_attention_mask: `[rows, target, source]`.
        rows: `[batch]`, the row of each example.
        decoder_offsets: `[batch]`, where each example's decoder tokens start
            in its row.
    """

    encoder_token_ids: tf.Tensor
    decoder_token_ids: tf.Tensor
    encoder_attention_mask: tf.Tensor
    decoder_attention_mask: tf.Tensor
    cross_attention_mask: tf.Tensor
    rows: tf.Tensor
    decoder_offsets: tf.Tensor

    def decoder_states_at(self, hidden_states, positions):
        """Rows of packed decoder states `[rows, target, hidden]` at `(example, position)`.

        `positions` is `[n, 2]` as `tf.where` on a `[batch, target]` tensor
        gives it; the result `[n, hidden]` equals `tf.gather_nd` of the
        padded batch's states at the same positions.
        """
        positions = tf.cast(positions, tf.int32)
        examples, steps = positions[:, 0], positions[:, 1]
        packed = tf.stack([tf.gather(self.rows, examples),
                           tf.gather(self.decoder_offsets, examples) + steps], axis=1)
        return tf.gather_nd(hidden_states, packed)


def pack_task(inputs: dict, examples_per_row: int, length_multiple: int = 1) -> PackedTask:
    """Packs one task's KerasHub inputs (the four `encoder_*`/`decoder_*` tensors).

    Args:
        inputs: `encoder_token_ids`, `encoder_padding_mask`,
            `decoder_token_ids`, `decoder_padding_mask`, each `[batch, length]`.
        examples_per_row: How many examples share a row (at most); the
            batch becomes `ceil(batch / examples_per_row)` rows.
        length_multiple: The packed rows' length (encoder and decoder) is
            rounded up to a multiple of this; the extra positions are
            padding that no token attends to.

    Returns:
        A `PackedTask`.
    """
    examples_per_row = check_examples_per_row(examples_per_row)
    length_multiple = check_length_multiple(length_multiple)
    encoder_lengths = _lengths(inputs["encoder_padding_mask"])
    decoder_lengths = _lengths(inputs["decoder_padding_mask"])
    rows, before, num_rows = _assign_rows(encoder_lengths + decoder_lengths, examples_per_row)
    encoder_ids, encoder_segments, _ = _pack(inputs["encoder_token_ids"], encoder_lengths,
                                             rows, before, num_rows, length_multiple)
    decoder_ids, decoder_segments, decoder_offsets = _pack(
        inputs["decoder_token_ids"], decoder_lengths, rows, before, num_rows, length_multiple)
    return PackedTask(
        encoder_token_ids=encoder_ids,
        decoder_token_ids=decoder_ids,
        encoder_attention_mask=_same_example(encoder_segments, encoder_segments),
        decoder_attention_mask=_same_example(decoder_segments, decoder_segments),
        cross_attention_mask=_same_example(decoder_segments, encoder_segments),
        rows=rows,
        decoder_offsets=decoder_offsets,
    )


def stack_examples(inputs: Sequence[dict]) -> dict:
    """Several tasks' KerasHub inputs as one batch: the first's examples, then the next's.

    Each tensor is padded to the widest of its kind, so that both tasks of a
    batch can be packed into the same rows (`DistillStepByStep` does so with
    `shared_encoder_pass=True`).
    """
    if len(inputs) == 1:
        return inputs[0]
    stacked = {}
    for key in inputs[0]:
        width = tf.reduce_max([tf.shape(i[key])[1] for i in inputs])
        stacked[key] = tf.concat([tf.pad(i[key], [[0, 0], [0, width - tf.shape(i[key])[1]]])
                                  for i in inputs], axis=0)
    return stacked


def round_up(size, multiple: int):
    """`size` (a scalar tensor or int) rounded up to a multiple of `multiple`."""
    return (size + multiple - 1) // multiple * multiple


def _lengths(padding_mask):
    return tf.reduce_sum(tf.cast(padding_mask, tf.int32), axis=1)


def _assign_rows(lengths, examples_per_row: int):
    """Each example's row, which examples come before it in its row, and the row count.

    Longest examples first; `before[i, j]` is True when example `j` precedes
    example `i` in their row.
    """
    batch = tf.shape(lengths)[0]
    num_rows = (batch + examples_per_row - 1) // examples_per_row
    order = tf.argsort(lengths, direction="DESCENDING", stable=True)
    rank = tf.range(batch)
    lap, place = rank // num_rows, rank % num_rows
    row_in_order = tf.where(lap % 2 == 0, place, num_rows - 1 - place)
    index = order[:, None]
    rows = tf.scatter_nd(index, row_in_order, [batch])
    laps = tf.scatter_nd(index, lap, [batch])
    before = tf.equal(rows[:, None], rows[None, :]) & (laps[None, :] < laps[:, None])
    return rows, before, num_rows


def _pack(token_ids, lengths, rows, before, num_rows, length_multiple=1):
    """Packed token ids `[rows, length]`, segment ids (example + 1; 0 on padding), starts."""
    starts = tf.reduce_sum(tf.where(before, lengths[None, :], 0), axis=1)
    # At least 1: a replica may get no example of a short last batch, and KerasHub's
    # attention infers a length from a reshape that an empty axis would leave ambiguous.
    length = tf.maximum(tf.reduce_max(tf.math.unsorted_segment_sum(lengths, rows, num_rows)), 1)
    length = round_up(length, length_multiple)
    real = tf.sequence_mask(lengths, tf.shape(token_ids)[1])
    where = tf.cast(tf.where(real), tf.int32)
    examples = where[:, 0]
    target = tf.stack([tf.gather(rows, examples), tf.gather(starts, examples) + where[:, 1]],
                      axis=1)
    shape = tf.stack([num_rows, length])
    packed_ids = tf.scatter_nd(target, tf.gather_nd(token_ids, where), shape)
    segments = tf.scatter_nd(target, examples + 1, shape)
    return packed_ids, segments, starts


def _same_example(query_segments, key_segments):
    return tf.logical_and(tf.equal(query_segments[:, :, None], key_segments[:, None, :]),
                          key_segments[:, None, :] > 0)
