"""T5's decoder: key/value caches for generation, shared encoder output for scoring."""

from __future__ import annotations

import tensorflow as tf

from dss_keras.decoding.decoder import Decoder


class T5Decoder(Decoder):
    """T5 (v1.0 and v1.1) with key/value caches and a precomputed position bias.

    The relative position bias of the decoder is computed once, by the first
    decoder layer, for every (query, key) position pair up to the longest
    output; step `t` reads row `t`, columns `0..t`.
    """

    def __init__(self, seq2seq_lm):
        super().__init__(seq2seq_lm)
        self.backbone = seq2seq_lm.backbone
        self.layers = self.backbone.decoder_transformer_layers
        attention = self.layers[0].self_attention
        self.num_heads = attention.num_heads
        self.head_dim = attention.key_value_dim
        # The residual stream, norms and attention compute in the layer norms' dtype; a
        # projection may compute in a lower one (`dss_keras.export_precision`).
        self.dtype = tf.as_dtype(self.backbone.decoder_layer_norm.compute_dtype)

    def start(self, token_ids, padding_mask, num_positions):
        memory = self._run(lambda t: self.seq2seq_lm.call_encoder(t, padding_mask), token_ids)
        cross = [
            (
                self._heads(self._run(layer.cross_attention.key_projector, memory)),
                self._heads(self._run(layer.cross_attention.value_projector, memory)),
            )
            for layer in self.layers
        ]
        # As KerasHub: masked keys get -1e9 added to their scores.
        mask = tf.cast(padding_mask, memory.dtype)[:, None, None, :]
        cross_bias = (1.0 - mask) * -1e9
        self_bias = self.layers[0].self_attention.compute_bias(num_positions, num_positions)
        return cross, cross_bias, tf.cast(self_bias, memory.dtype)

    def empty_cache(self, batch, state):
        dtype = state[1].dtype
        empty = tf.zeros([batch, self.num_heads, 0, self.head_dim], dtype)
        return [(empty, empty) for _ in self.layers]

    def cache_shapes(self):
        shape = tf.TensorShape([None, self.num_heads, None, self.head_dim])
        return [(shape, shape) for _ in self.layers]

    def step(self, state, cache, token_ids, position):
        # One token per row: activations are `[batch, hidden]`, so every
        # projection is a plain 2-D matmul.
        cross, cross_bias, self_bias = state
        self_bias = self_bias[:, :, position : position + 1, : position + 1]
        run = self._run
        x = run(self.backbone.token_embedding, token_ids)
        new_cache = []
        for layer, (keys, values), (cross_keys, cross_values) in zip(self.layers, cache, cross):
            attention = layer.self_attention
            h = run(layer.self_attention_layer_norm, x)
            keys = tf.concat([keys, self._one_position(run(attention.key_projector, h))], axis=2)
            values = tf.concat([values, self._one_position(run(attention.value_projector, h))],
                               axis=2)
            new_cache.append((keys, values))
            query = self._one_position(run(attention.query_projector, h))
            x = x + run(attention.output_projector, _attend(query, keys, values, self_bias))

            attention = layer.cross_attention
            h = run(layer.cross_attention_layer_norm, x)
            query = self._one_position(run(attention.query_projector, h))
            x = x + run(attention.output_projector,
                        _attend(query, cross_keys, cross_values, cross_bias))
            x = x + run(lambda y: _feed_forward(layer, y), x)
        return self._logits(x), new_cache

    def candidate_logits(self, token_ids, padding_mask, decoder_ids):
        # Every row's candidates share its encoder output: a candidate's
        # self-attention sees its own tokens (causally), while the
        # cross-attention of all candidates of a row is one product with the
        # row's keys. Activations are `[rows * candidates * length, hidden]`.
        shape = tf.shape(decoder_ids)
        batch, candidates, length = shape[0], shape[1], shape[2]
        cross, cross_bias, self_bias = self.start(token_ids, padding_mask, length)
        causal = tf.linalg.band_part(tf.ones([length, length], self_bias.dtype), -1, 0)
        self_bias = (self_bias + (1.0 - causal) * -1e9)[:, None]  # [1, 1, heads, q, k]
        per_candidate = [batch, candidates, length, self.num_heads, self.head_dim]
        per_row = [batch, candidates * length, self.num_heads, self.head_dim]

        def heads(x, shape, order):
            return tf.transpose(tf.reshape(x, shape), order)

        def merged(x, order):
            return tf.reshape(tf.transpose(x, order), [-1, self.num_heads * self.head_dim])

        run = self._run
        x = run(self.backbone.token_embedding, tf.reshape(decoder_ids, [-1]))
        for layer, (cross_keys, cross_values) in zip(self.layers, cross):
            attention = layer.self_attention
            h = run(layer.self_attention_layer_norm, x)
            query, keys, values = (
                heads(run(projector, h), per_candidate, [0, 1, 3, 2, 4])
                for projector in (attention.query_projector, attention.key_projector,
                                  attention.value_projector)
            )
            attended = _weighted_values(query, keys, values, self_bias)
            x = x + run(attention.output_projector, merged(attended, [0, 1, 3, 2, 4]))

            attention = layer.cross_attention
            h = run(layer.cross_attention_layer_norm, x)
            query = heads(run(attention.query_projector, h), per_row, [0, 2, 1, 3])
            attended = _weighted_values(query, cross_keys, cross_values, cross_bias)
            x = x + run(attention.output_projector, merged(attended, [0, 2, 1, 3]))
            x = x + run(lambda y: _feed_forward(layer, y), x)
        logits = self._logits(x)
        return tf.reshape(logits, [batch, candidates, length, -1])

    def _logits(self, x):
        """The decoder's last hidden states `[rows, hidden]` -> logits `[rows, vocab]`."""
        x = self._run(self.backbone.decoder_layer_norm, x)
        if self.backbone.tie_embedding_weights:
            x = x * tf.cast(self.backbone.hidden_dim**-0.5, x.dtype)
        return self.backbone.token_embedding(x, reverse=True)

    def _run(self, layer, x):
        """`layer(x)` in the residual stream's dtype."""
        return tf.cast(layer(x), self.dtype)

    def _heads(self, x):
        """`[batch, length, heads * dim]` -> `[batch, heads, length, dim]`."""
        x = tf.reshape(x, [tf.shape(x)[0], -1, self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def _one_position(self, x):
        """`[batch, heads * dim]` -> `[batch, heads, 1, dim]`."""
        return tf.reshape(x, [-1, self.num_heads, 1, self.head_dim])


def _feed_forward(layer, x):
    """A T5 layer's feed-forward block on `x` (the residual is the caller's)."""
    h = layer.layer_norm(x)
    hidden = layer.input_projector(h)
    if layer.use_gated_activation:
        hidden = hidden * layer.gate_projector(h)
    return layer.output_projector(hidden)


def _weighted_values(query, keys, values, bias):
    """`softmax(query . keys + bias) . values` over the last two axes (T5: no scaling)."""
    scores = tf.matmul(query, keys, transpose_b=True) + bias
    return tf.matmul(tf.nn.softmax(scores, axis=-1), values)


def _attend(query, keys, values, bias):
    """One query per row over cached keys: `[batch, heads, 1, dim]` -> `[batch, heads * dim]`."""
    output = _weighted_values(query, keys, values, bias)
    return tf.reshape(output, [-1, query.shape[1] * query.shape[3]])


def has_plain_output_projection(backbone) -> bool:
    """Whether the output projection is a plain matmul (no soft cap, no cast)."""
    embedding = backbone.token_embedding
    return (
        getattr(embedding, "logit_soft_cap", None) is None
        and getattr(embedding, "reverse_dtype", None) is None
    )
