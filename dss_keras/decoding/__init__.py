"""Greedy decoding of a KerasHub `Seq2SeqLM`, in plain TensorFlow ops.

The same code serves `DistillStepByStep.predict_labels()`/`explain()` and the
exported SavedModel, so the two give the same answers.

Decoding runs the encoder once, projects the encoder output to the
cross-attention keys and values once, and then feeds one token per step
through the decoder, keeping each self-attention layer's keys and values in a
cache that grows by `tf.concat` inside a `tf.while_loop`. Every op is a plain
TensorFlow op with a CPU kernel: there is no `Xla*` op (KerasHub's own cached
decoding writes its cache with `XlaDynamicUpdateSlice`) and nothing is
compiled with XLA, so the graph runs in TF Serving and with XLA off.

`Decoder.sequence_log_probabilities` scores given targets instead of
generating: every candidate of every row in one teacher-forced pass (the
closed label set of `dss_keras.label_scorer`). T5 runs its encoder once per
row and lets all of a row's candidates attend to it.

The decoder calls the model's own Keras sublayers (projections, norms,
embeddings), so dtype policies, quantized and LoRA layers behave as in the
model; only the attention is written here. T5 gets a cached
decoder (`dss_keras.decoding.t5`); any other `Seq2SeqLM` (BART included, for
now) falls back to recomputing the whole decoder at every step (slow, same
tokens; `dss_keras.decoding.decoder`, which also holds the loop).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import keras_hub
import tensorflow as tf

from dss_keras.decoding.decoder import Decoder, RecomputingDecoder, checked_settings
from dss_keras.decoding.t5 import T5Decoder, has_plain_output_projection

__all__ = ["Decoder", "RecomputingDecoder", "T5Decoder", "decoder_for", "greedy_decode"]


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

    Works eagerly (the loop is compiled into a `tf.function` once per model and
    setting) and inside a `tf.function` (the loop is traced inline), with any
    batch size and input length.

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

    Examples:

    >>> from dss_keras import testing
    >>> from dss_keras.preprocessor import MultiTaskPreprocessor
    >>> lm = testing.tiny_seq2seq_lm()
    >>> pre = MultiTaskPreprocessor.from_seq2seq_lm(lm, max_label_length=4)
    >>> inputs = pre.encode_inputs(["Dee has 3 rocks. How many?"], "label")
    >>> ids = greedy_decode(lm, inputs["encoder_token_ids"],
    ...                     inputs["encoder_padding_mask"],
    ...                     decoder_start_ids=pre.decoder_start_ids,
    ...                     end_token_id=pre.end_token_id,
    ...                     pad_token_id=pre.pad_token_id, max_length=4)
    >>> ids.shape, ids.dtype.name
    (TensorShape([1, 4]), 'int32')
    """
    settings = checked_settings(decoder_start_ids, end_token_id, pad_token_id, max_length)
    decoder = decoder_for(seq2seq_lm)
    if not tf.executing_eagerly():
        return decoder.greedy(encoder_token_ids, encoder_padding_mask, **settings)
    function = _compiled_greedy(seq2seq_lm, decoder, settings)
    return function(
        tf.cast(encoder_token_ids, tf.int32), tf.cast(encoder_padding_mask, tf.int32)
    )


def decoder_for(seq2seq_lm, *, frozen: bool = False) -> "Decoder":
    """The decoder of a `Seq2SeqLM`: cached for T5, else recomputing.

    The decoder calls the model's layers, so it always decodes with the
    model's current weights, unless `frozen`: then a T5 decoder may keep
    bfloat16 kernels in a faster layout of its own (`T5Decoder`), for a model
    whose weights no longer change (an export's). A frozen decoder is new on
    every call, never cached.

    Examples:

    >>> from dss_keras import testing
    >>> lm = testing.tiny_seq2seq_lm()
    >>> type(decoder_for(lm)).__name__, decoder_for(lm) is decoder_for(lm)
    ('T5Decoder', True)
    >>> decoder_for(lm, frozen=True) is decoder_for(lm)
    False
    """
    decoder = None if frozen else _DECODERS.get(seq2seq_lm)
    if decoder is None:
        backbone = getattr(seq2seq_lm, "backbone", None)
        if isinstance(backbone, keras_hub.models.T5Backbone) and has_plain_output_projection(backbone):
            decoder = T5Decoder(seq2seq_lm, transpose_bfloat16_kernels=frozen)
        else:
            decoder = RecomputingDecoder(seq2seq_lm)
        if not frozen:
            _DECODERS[seq2seq_lm] = decoder
    return decoder


_DECODERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_FUNCTIONS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _compiled_greedy(seq2seq_lm, decoder: Decoder, settings: dict):
    """One `tf.function` per model and decoding settings, for eager callers."""
    functions = _FUNCTIONS.setdefault(seq2seq_lm, {})
    key = tuple(sorted(settings.items()))
    if key not in functions:
        spec = tf.TensorSpec([None, None], tf.int32)

        @tf.function(input_signature=[spec, spec])
        def function(token_ids, padding_mask):
            return decoder.greedy(token_ids, padding_mask, **settings)

        functions[key] = function
    return functions[key]
