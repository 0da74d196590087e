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
decoder; any other `Seq2SeqLM` (BART included, for now) falls back to
recomputing the whole decoder at every step (slow, same tokens).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import keras_hub
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
    settings = _settings(decoder_start_ids, end_token_id, pad_token_id, max_length)
    decoder = decoder_for(seq2seq_lm)
    if not tf.executing_eagerly():
        return decoder.greedy(encoder_token_ids, encoder_padding_mask, **settings)
    function = _compiled_greedy(seq2seq_lm, decoder, settings)
    return function(
        tf.cast(encoder_token_ids, tf.int32), tf.cast(encoder_padding_mask, tf.int32)
    )


def decoder_for(seq2seq_lm) -> "Decoder":
    """The decoder of a `Seq2SeqLM`: cached for T5, else recomputing.

    The decoder holds no weights of its own; it calls the model's layers, so it
    always decodes with the model's current weights.
    """
    decoder = _DECODERS.get(seq2seq_lm)
    if decoder is None:
        backbone = getattr(seq2seq_lm, "backbone", None)
        if isinstance(backbone, keras_hub.models.T5Backbone) and _plain_embedding(backbone):
            decoder = T5Decoder(seq2seq_lm)
        else:
            decoder = RecomputingDecoder(seq2seq_lm)
        _DECODERS[seq2seq_lm] = decoder
    return decoder


class Decoder:
    """The greedy loop; subclasses say how to encode and how to take one step.

    A subclass implements `start()` (encoder output and everything that stays
    constant while decoding), `empty_cache()` with `cache_shapes()` (the
    per-step state and its shape invariants) and `step()` (one token in,
    next-token logits out).
    """

    def __init__(self, seq2seq_lm):
        # A weak reference: decoders are cached per model and must not keep it alive.
        self._seq2seq_lm = weakref.ref(seq2seq_lm)

    @property
    def seq2seq_lm(self):
        return self._seq2seq_lm()

    @tf.autograph.experimental.do_not_convert
    def greedy(
        self,
        encoder_token_ids,
        encoder_padding_mask,
        *,
        decoder_start_ids: Sequence[int],
        end_token_id: int,
        pad_token_id: int,
        max_length: int,
        stop_at_end: bool = True,
    ) -> tf.Tensor:
        """`greedy_decode` for this model; `stop_at_end=False` always runs `max_length` steps.

        The tokens are the same either way (rows that ended keep emitting
        pads); `stop_at_end=False` only gives a fixed cost, for benchmarks.
        """
        settings = _settings(decoder_start_ids, end_token_id, pad_token_id, max_length)
        token_ids = tf.cast(encoder_token_ids, tf.int32)
        padding_mask = tf.cast(encoder_padding_mask, tf.int32)
        # An empty batch skips the model (whose reshapes cannot infer a size from 0 rows).
        return tf.cond(
            tf.shape(token_ids)[0] > 0,
            lambda: self._greedy(token_ids, padding_mask, stop_at_end, **settings),
            lambda: tf.zeros([0, settings["max_length"]], tf.int32),
        )

    def generate_text(self, preprocessor, texts, task: str, stop_at_end: bool = True):
        """Strings `[batch]` -> generated strings for one task (encode, `greedy`, decode).

        The one path from text to text, used by `DistillStepByStep.generate_text`
        and by the exported serving graph.
        """
        inputs = preprocessor.encode_inputs(texts, task)
        ids = self.greedy(
            inputs["encoder_token_ids"],
            inputs["encoder_padding_mask"],
            decoder_start_ids=preprocessor.decoder_start_ids,
            end_token_id=preprocessor.end_token_id,
            pad_token_id=preprocessor.pad_token_id,
            max_length=preprocessor.max_target_length(task),
            stop_at_end=stop_at_end,
        )
        return preprocessor.decode(ids)

    @tf.autograph.experimental.do_not_convert
    def sequence_log_probabilities(
        self, encoder_token_ids, encoder_padding_mask, target_ids, target_mask, *,
        decoder_start_ids: Sequence[int],
    ) -> tf.Tensor:
        """The log-probability of each given target, for several targets per row, in one pass.

        Teacher forcing: the decoder reads each target shifted right (after
        the start ids) and every position's next-token distribution is read
        at once; no token is generated.

        Args:
            encoder_token_ids: int `[batch, input_length]`.
            encoder_padding_mask: int/bool `[batch, input_length]`.
            target_ids: int `[batch, candidates, length]`: each candidate's
                target tokens, end token included, padded after it.
            target_mask: `[batch, candidates, length]`, 1 on target tokens
                and 0 on padding (a row of zeros: no candidate).
            decoder_start_ids: The ids the decoder starts from (T5: `[0]`).

        Returns:
            float32 `[batch, candidates]`: `sum_t log p(target_t | input,
            target_<t)` over each candidate's tokens (0 for an all-padding one).

        Examples:

        >>> from dss_keras import testing
        >>> lm = testing.tiny_seq2seq_lm()
        >>> scores = decoder_for(lm).sequence_log_probabilities(
        ...     [[5, 6, 1]], [[1, 1, 1]], [[[7, 1], [8, 1]]], [[[1, 1], [1, 1]]],
        ...     decoder_start_ids=[0])
        >>> scores.shape, bool(tf.reduce_all(scores < 0))
        (TensorShape([1, 2]), True)
        """
        token_ids = tf.cast(encoder_token_ids, tf.int32)
        padding_mask = tf.cast(encoder_padding_mask, tf.int32)
        target_ids = tf.cast(target_ids, tf.int32)
        target_mask = tf.cast(target_mask, tf.float32)
        start_ids = _settings(decoder_start_ids, 0, 0, 1)["decoder_start_ids"]
        shape = tf.shape(target_ids)
        starts = tf.fill([shape[0], shape[1], len(start_ids)], 0) + tf.constant(start_ids)
        decoder_ids = tf.concat([starts, target_ids[:, :, :-1]], axis=2)

        def score():
            logits = self.candidate_logits(token_ids, padding_mask, decoder_ids)
            logits = tf.cast(logits[:, :, len(start_ids) - 1 :, :], tf.float32)
            chosen = tf.gather(logits, target_ids, batch_dims=3)
            log_probs = chosen - tf.reduce_logsumexp(logits, axis=-1)
            return tf.reduce_sum(log_probs * target_mask, axis=-1)

        # An empty batch or candidate list skips the model, as `greedy` does.
        return tf.cond(
            tf.reduce_prod(shape[:2]) > 0, score, lambda: tf.zeros(shape[:2], tf.float32)
        )

    def _greedy(
        self,
        token_ids,
        padding_mask,
        stop_at_end,
        *,
        decoder_start_ids,
        end_token_id,
        pad_token_id,
        max_length,
    ):
        start_ids = decoder_start_ids
        batch = tf.shape(token_ids)[0]
        num_positions = len(start_ids) - 1 + max_length
        state = self.start(token_ids, padding_mask, num_positions)
        cache = self.empty_cache(batch, state)
        # All start ids but the last only fill the cache.
        for position, token in enumerate(start_ids[:-1]):
            _, cache = self.step(state, cache, tf.fill([batch], token), tf.constant(position))
        first_position = len(start_ids) - 1
        end = tf.constant(end_token_id, tf.int32)
        pad = tf.constant(pad_token_id, tf.int32)

        def keep_going(step, token_ids, done, cache, generated):
            if not stop_at_end:
                return tf.constant(True)
            return tf.logical_not(tf.reduce_all(done))

        def decode_one(step, token_ids, done, cache, generated):
            logits, cache = self.step(state, cache, token_ids, step + first_position)
            next_ids = tf.argmax(logits, axis=-1, output_type=tf.int32)
            next_ids = tf.where(done, pad, next_ids)
            generated = tf.concat([generated, next_ids[:, None]], axis=1)
            return step + 1, next_ids, done | tf.equal(next_ids, end), cache, generated

        loop_vars = (
            tf.constant(0),
            tf.fill([batch], tf.constant(start_ids[-1], tf.int32)),
            tf.zeros([batch], tf.bool),
            cache,
            tf.zeros([batch, 0], tf.int32),
        )
        invariants = (
            tf.TensorShape([]),
            tf.TensorShape([None]),
            tf.TensorShape([None]),
            self.cache_shapes(),
            tf.TensorShape([None, None]),
        )
        *_, generated = tf.while_loop(
            keep_going,
            decode_one,
            loop_vars,
            shape_invariants=invariants,
            maximum_iterations=max_length,
        )
        padding = max_length - tf.shape(generated)[1]
        generated = tf.pad(generated, [[0, 0], [0, padding]], constant_values=pad_token_id)
        return tf.reshape(generated, [-1, max_length])

    # --- to implement --------------------------------------------------------

    def start(self, token_ids, padding_mask, num_positions: int):
        """Encodes; returns the state that stays constant while decoding."""
        raise NotImplementedError

    def empty_cache(self, batch, state):
        """The per-step state before the first token."""
        raise NotImplementedError

    def cache_shapes(self):
        """Shape invariants of `empty_cache()`'s structure."""
        raise NotImplementedError

    def step(self, state, cache, token_ids, position):
        """Feeds `token_ids` `[batch]` at `position`; returns `[batch, vocab]` logits, cache."""
        raise NotImplementedError

    def candidate_logits(self, token_ids, padding_mask, decoder_ids):
        """Decoder inputs `[batch, candidates, length]` -> logits `[batch, candidates, length, vocab]`."""
        raise NotImplementedError


class RecomputingDecoder(Decoder):
    """Any `Seq2SeqLM`: reruns the model on the whole prefix at every step."""

    def start(self, token_ids, padding_mask, num_positions):
        return token_ids, padding_mask

    def empty_cache(self, batch, state):
        return tf.zeros([batch, 0], tf.int32)

    def cache_shapes(self):
        return tf.TensorShape([None, None])

    def step(self, state, cache, token_ids, position):
        encoder_token_ids, encoder_padding_mask = state
        decoded = tf.concat([cache, token_ids[:, None]], axis=1)
        logits = self.seq2seq_lm(
            {
                "encoder_token_ids": encoder_token_ids,
                "encoder_padding_mask": encoder_padding_mask,
                "decoder_token_ids": decoded,
                "decoder_padding_mask": tf.ones_like(decoded),
            },
            training=False,
        )
        return logits[:, -1, :], decoded

    def candidate_logits(self, token_ids, padding_mask, decoder_ids):
        shape = tf.shape(decoder_ids)
        flat = tf.reshape(decoder_ids, [-1, shape[2]])
        logits = self.seq2seq_lm(
            {
                "encoder_token_ids": tf.repeat(token_ids, shape[1], axis=0),
                "encoder_padding_mask": tf.repeat(padding_mask, shape[1], axis=0),
                "decoder_token_ids": flat,
                "decoder_padding_mask": tf.ones_like(flat),
            },
            training=False,
        )
        return tf.reshape(logits, tf.concat([shape, tf.shape(logits)[-1:]], axis=0))


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


def _plain_embedding(backbone) -> bool:
    """Whether the output projection is a plain matmul (no soft cap, no cast)."""
    embedding = backbone.token_embedding
    return (
        getattr(embedding, "logit_soft_cap", None) is None
        and getattr(embedding, "reverse_dtype", None) is None
    )


def _settings(decoder_start_ids, end_token_id, pad_token_id, max_length) -> dict:
    start_ids = tuple(int(i) for i in decoder_start_ids)
    if not start_ids:
        raise ValueError(
            "`decoder_start_ids` must hold at least one id. "
            f"Received: decoder_start_ids={list(decoder_start_ids)}"
        )
    if int(max_length) < 1:
        raise ValueError(f"`max_length` must be at least 1. Received: max_length={max_length}")
    return {
        "decoder_start_ids": start_ids,
        "end_token_id": int(end_token_id),
        "pad_token_id": int(pad_token_id),
        "max_length": int(max_length),
    }


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
