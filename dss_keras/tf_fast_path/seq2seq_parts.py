"""The pieces of a KerasHub seq2seq LM that the fast training loss calls one by one.

`DistillStepByStep` computes its loss faster than `seq2seq_lm(inputs)` allows
by calling the model in pieces:

- `hidden_states`: the decoder's last hidden states (the backbone, no
  vocabulary projection);
- `vocabulary_logits`: the language-model head, applied only to the hidden
  states of real target tokens (padding never reaches the vocabulary-sized
  matmul and softmax, the largest in a small model);
- `encode` / `decode`: the encoder and the decoder apart (T5 only), so that
  both tasks' inputs go through the encoder in one call, so that several
  examples can share a row with per-example attention masks
  (`dss_keras.tf_fast_path.packing`), and so that each transformer layer can be
  recomputed in the backward pass instead of storing its activations
  (`rematerialize=True`, see `dss_keras.tf_fast_path.remat`).

Each piece calls the model's own layers in the order its functional graph
does; `tests/tf_fast_path/test_fast_loss.py` checks that the pieces give the logits of
`seq2seq_lm(inputs)`.

Examples:

>>> from dss_keras import testing
>>> lm = testing.tiny_seq2seq_lm()
>>> parts = Seq2SeqParts.of(lm)
>>> parts.can_split_encoder
True
>>> import numpy as np
>>> x = {"encoder_token_ids": np.array([[5, 6, 1]]), "encoder_padding_mask": np.array([[1, 1, 1]]),
...      "decoder_token_ids": np.array([[0, 7]]), "decoder_padding_mask": np.array([[1, 1]])}
>>> logits = parts.vocabulary_logits(parts.hidden_states(x))
>>> bool(np.allclose(logits, lm(x), atol=1e-5))
True
"""

from __future__ import annotations

import keras
import keras_hub
import tensorflow as tf

from dss_keras.tf_fast_path.remat import call_rematerialized


class Seq2SeqParts:
    """Calls a T5 or BART `Seq2SeqLM` piece by piece (see the module docstring).

    Use `Seq2SeqParts.of(seq2seq_lm)`, which returns `None` for a model whose
    pieces are not known here; such a model trains on the plain path.
    """

    def __init__(self, seq2seq_lm: keras.Model):
        self.seq2seq_lm = seq2seq_lm
        self.backbone = seq2seq_lm.backbone
        self.can_split_encoder = isinstance(self.backbone, keras_hub.models.T5Backbone)

    @classmethod
    def of(cls, seq2seq_lm: keras.Model) -> "Seq2SeqParts | None":
        """The pieces of a `T5Seq2SeqLM` or `BartSeq2SeqLM`; `None` for other models."""
        known = (keras_hub.models.T5Seq2SeqLM, keras_hub.models.BartSeq2SeqLM)
        return cls(seq2seq_lm) if isinstance(seq2seq_lm, known) else None

    def hidden_states(self, inputs: dict, training: bool = False, rematerialize: bool = False):
        """The decoder's last hidden states `[batch, target, hidden]`.

        With `rematerialize` (T5 only) each transformer layer is recomputed in
        the backward pass rather than stored.
        """
        if not rematerialize:
            return self.backbone(inputs, training=training)["decoder_sequence_output"]
        outputs = self.encode(inputs["encoder_token_ids"], inputs["encoder_padding_mask"],
                              training=training, rematerialize=True)
        return self.decode(inputs["decoder_token_ids"], inputs["decoder_padding_mask"],
                           outputs, inputs["encoder_padding_mask"], training=training,
                           rematerialize=True)

    def vocabulary_logits(self, hidden_states):
        """The LM head: hidden states `[..., hidden]` to logits `[..., vocabulary]`."""
        backbone = self.backbone
        if getattr(backbone, "tie_embedding_weights", False) and self.can_split_encoder:
            # T5 rescales the decoder output when the head shares the embedding.
            hidden_states = hidden_states * tf.cast(backbone.hidden_dim**-0.5,
                                                    hidden_states.dtype)
        return backbone.token_embedding(hidden_states, reverse=True)

    def encode(self, token_ids, padding_mask, training: bool = False,
               rematerialize: bool = False, attention_mask=None):
        """T5's encoder: `[batch, source, hidden]` outputs.

        `attention_mask` (`[batch, source, source]`, e.g. a packed batch's)
        replaces the one of `padding_mask`, which may then be `None`.
        """
        backbone = self.backbone
        x = backbone.token_embedding(token_ids)
        x = backbone.encoder_embedding_dropout(x, training=training)
        if attention_mask is None:
            attention_mask = padding_mask[:, None, :]
        position_bias = None
        for layer in backbone.encoder_transformer_layers:
            def call(x, position_bias=None, layer=layer):
                return layer(x, attention_mask=attention_mask, position_bias=position_bias,
                             use_causal_mask=False, training=training)

            x, position_bias = _run_layer(layer, call, x, position_bias, rematerialize)
        x = backbone.encoder_layer_norm(x)
        return backbone.encoder_dropout(x, training=training)

    def decode(self, token_ids, padding_mask, encoder_outputs, encoder_padding_mask,
               training: bool = False, rematerialize: bool = False, attention_mask=None,
               encoder_attention_mask=None):
        """T5's decoder over given encoder outputs: `[batch, target, hidden]`.

        `attention_mask` (`[batch, target, target]`, the causal part is
        added) and `encoder_attention_mask` (`[batch, target, source]`)
        replace those of the padding masks, which may then be `None`.
        """
        backbone = self.backbone
        x = backbone.token_embedding(token_ids)
        x = backbone.decoder_embedding_dropout(x, training=training)
        if attention_mask is None:
            attention_mask = padding_mask[:, None, :]
        if encoder_attention_mask is None:
            encoder_attention_mask = encoder_padding_mask[:, None, :]
        position_bias = None
        for layer in backbone.decoder_transformer_layers:
            def call(x, encoder_outputs, position_bias=None, layer=layer):
                return layer(x, attention_mask=attention_mask, position_bias=position_bias,
                             encoder_hidden_states=encoder_outputs,
                             encoder_attention_mask=encoder_attention_mask,
                             use_causal_mask=True, training=training)

            x, position_bias = _run_layer(layer, call, (x, encoder_outputs), position_bias,
                                          rematerialize)
        x = backbone.decoder_layer_norm(x)
        return backbone.decoder_dropout(x, training=training)


def _run_layer(layer, call, inputs, position_bias, rematerialize: bool):
    """One T5 layer: `call(*inputs[, position_bias])`, rematerialised or not.

    The first layer of a stack computes the position bias (`position_bias`
    is `None`) and every later one reads it, so it is passed only when set.
    """
    inputs = inputs if isinstance(inputs, tuple) else (inputs,)
    if position_bias is not None:
        inputs += (position_bias,)
    if not rematerialize:
        return call(*inputs)
    return call_rematerialized(layer, call, inputs)
