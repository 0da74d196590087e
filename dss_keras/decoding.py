"""Greedy decoding of a KerasHub `Seq2SeqLM`, in plain TensorFlow ops.

The same function serves `DistillStepByStep.predict_labels()`/`explain()` and
the exported SavedModel, so the two give the same answers.
"""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf


def greedy_decode(
    seq2seq_lm,
    encoder_token_ids,
    encoder_padding_mask,
    *,
    decoder_start_ids: Sequence[int],
    end_token_id: int,
    pad_token_id: int,
    max_length: int,
) -> tf.Tensor:
    """Decodes greedily until every row has produced the end token or `max_length` tokens.

    Args:
        seq2seq_lm: A KerasHub `Seq2SeqLM` (its functional call maps the four
            `encoder_*`/`decoder_*` inputs to logits).
        encoder_token_ids: int `[batch, input_length]`.
        encoder_padding_mask: int/bool `[batch, input_length]`.
        decoder_start_ids: The ids the decoder starts from (T5: `[0]`).
        end_token_id: Generation of a row stops after this id.
        pad_token_id: Fills a row after its end token.
        max_length: The most tokens generated per row, end token included.

    Returns:
        int32 `[batch, max_length]`: the generated ids without the start ids;
        each row holds its end token (if produced) and pads after it.
    """
    encoder_token_ids = tf.cast(encoder_token_ids, tf.int32)
    encoder_padding_mask = tf.cast(encoder_padding_mask, tf.int32)
    batch = tf.shape(encoder_token_ids)[0]
    start = tf.tile(tf.constant([list(decoder_start_ids)], tf.int32), [batch, 1])
    decoded = start
    done = tf.zeros([batch], tf.bool)
    for _ in range(max_length):
        logits = seq2seq_lm(
            {
                "encoder_token_ids": encoder_token_ids,
                "encoder_padding_mask": encoder_padding_mask,
                "decoder_token_ids": decoded,
                "decoder_padding_mask": tf.ones_like(decoded),
            },
            training=False,
        )
        next_ids = tf.argmax(logits[:, -1, :], axis=-1, output_type=tf.int32)
        next_ids = tf.where(done, pad_token_id, next_ids)
        decoded = tf.concat([decoded, next_ids[:, None]], axis=1)
        done |= tf.equal(next_ids, end_token_id)
        if tf.executing_eagerly() and bool(tf.reduce_all(done)):
            break
    generated = decoded[:, len(decoder_start_ids) :]
    padding = max_length - tf.shape(generated)[1]
    return tf.pad(generated, [[0, 0], [0, padding]], constant_values=pad_token_id)
