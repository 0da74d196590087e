"""The decoding loop and teacher-forced scoring, for any `Seq2SeqLM`; the recomputing fallback.

`Decoder` holds the greedy loop and `sequence_log_probabilities`; a subclass
says how to encode, take one step and read candidates' logits.
`RecomputingDecoder` runs the whole model at every step (any `Seq2SeqLM`).
"""

from __future__ import annotations

import weakref
from typing import Sequence

import tensorflow as tf


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
        # Weights the decoder holds in its own layout, and the model's it reads instead.
        self.variables: list = []
        self.replaced_variables: list = []

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
        settings = checked_settings(decoder_start_ids, end_token_id, pad_token_id, max_length)
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
        >>> from dss_keras.decoding import decoder_for
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
        start_ids = checked_settings(decoder_start_ids, 0, 0, 1)["decoder_start_ids"]
        shape = tf.shape(target_ids)
        starts = tf.fill([shape[0], shape[1], len(start_ids)], 0) + tf.constant(start_ids)
        decoder_ids = tf.concat([starts, target_ids[:, :, :-1]], axis=2)

        def score():
            # Logits only where a target token is (not on padding): the output
            # projection over the vocabulary is the largest product here.
            where = tf.where(target_mask > 0)  # [tokens, 3]: row, candidate, position
            positions = where + tf.constant([0, 0, len(start_ids) - 1], tf.int64)
            logits = self.candidate_logits(token_ids, padding_mask, decoder_ids, positions)
            logits = tf.cast(logits, tf.float32)
            chosen = tf.gather(logits, tf.gather_nd(target_ids, where), batch_dims=1)
            log_probs = chosen - tf.reduce_logsumexp(logits, axis=-1)
            grid = tf.scatter_nd(where, log_probs, tf.shape(target_ids, out_type=tf.int64))
            return tf.reduce_sum(grid, axis=-1)

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

    def candidate_logits(self, token_ids, padding_mask, decoder_ids, positions):
        """Decoder inputs `[batch, candidates, length]` -> logits `[tokens, vocab]` at `positions`.

        `positions` is int64 `[tokens, 3]`: (row, candidate, position) of
        each wanted next-token distribution.
        """
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

    def candidate_logits(self, token_ids, padding_mask, decoder_ids, positions):
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
        logits = tf.reshape(logits, tf.concat([shape, tf.shape(logits)[-1:]], axis=0))
        return tf.gather_nd(logits, positions)


def checked_settings(decoder_start_ids, end_token_id, pad_token_id, max_length) -> dict:
    """The decoding settings as plain Python values; bad ones raise `ValueError`."""
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
