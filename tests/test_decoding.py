"""Cached greedy decoding: same tokens as the full-recompute oracle, graph-safe, no XLA."""

import numpy as np
import pytest
import tensorflow as tf

from dss_keras import decoding, testing
from dss_keras.preprocessor import MultiTaskPreprocessor


_INPUT_KEYS = (
    "encoder_token_ids",
    "encoder_padding_mask",
    "decoder_token_ids",
    "decoder_padding_mask",
)
_compiled_calls = {}


def reference_greedy_decode(
    seq2seq_lm,
    encoder_token_ids,
    encoder_padding_mask,
    *,
    decoder_start_ids,
    end_token_id,
    pad_token_id,
    max_length,
):
    """The original decoder: reruns the whole model on the prefix at every step.

    (The model call is wrapped in a `tf.function`, only to make the test faster.)
    """
    spec = tf.TensorSpec([None, None], tf.int32)
    call = _compiled_calls.setdefault(
        id(seq2seq_lm),
        tf.function(
            lambda x: seq2seq_lm(x, training=False),
            input_signature=[{key: spec for key in _INPUT_KEYS}],
        ),
    )
    encoder_token_ids = tf.cast(encoder_token_ids, tf.int32)
    encoder_padding_mask = tf.cast(encoder_padding_mask, tf.int32)
    batch = tf.shape(encoder_token_ids)[0]
    decoded = tf.tile(tf.constant([list(decoder_start_ids)], tf.int32), [batch, 1])
    done = tf.zeros([batch], tf.bool)
    for _ in range(max_length):
        logits = call(
            {
                "encoder_token_ids": encoder_token_ids,
                "encoder_padding_mask": encoder_padding_mask,
                "decoder_token_ids": decoded,
                "decoder_padding_mask": tf.ones_like(decoded),
            }
        )
        next_ids = tf.argmax(logits[:, -1, :], axis=-1, output_type=tf.int32)
        next_ids = tf.where(done, pad_token_id, next_ids)
        decoded = tf.concat([decoded, next_ids[:, None]], axis=1)
        done |= tf.equal(next_ids, end_token_id)
        if bool(tf.reduce_all(done)):
            break
    generated = decoded[:, len(decoder_start_ids) :]
    padding = max_length - tf.shape(generated)[1]
    return tf.pad(generated, [[0, 0], [0, padding]], constant_values=pad_token_id)


@pytest.fixture(scope="module")
def lm():
    # Random weights whose greedy rows end at the end token on some inputs only.
    return testing.tiny_seq2seq_lm(num_layers=2, seed=4)


@pytest.fixture(scope="module")
def pre(lm):
    return MultiTaskPreprocessor.from_seq2seq_lm(lm, max_label_length=12, max_rationale_length=40)


@pytest.fixture(scope="module")
def inputs(pre):
    texts = [record.input for record in testing.toy_records(22, seed=3)] + ["", "ß 日本"]
    return pre.encode_inputs(texts, "rationale")


def settings(pre, max_length, **overrides):
    values = {
        "decoder_start_ids": pre.decoder_start_ids,
        "end_token_id": pre.end_token_id,
        "pad_token_id": pre.pad_token_id,
        "max_length": max_length,
    }
    values.update(overrides)
    return values


def decode_both(lm, inputs, **kwargs):
    args = (inputs["encoder_token_ids"], inputs["encoder_padding_mask"])
    expected = reference_greedy_decode(lm, *args, **kwargs).numpy()
    return decoding.greedy_decode(lm, *args, **kwargs).numpy(), expected


def test_t5_gets_the_cached_decoder(lm):
    assert isinstance(decoding.decoder_for(lm), decoding.T5Decoder)
    assert decoding.decoder_for(lm) is decoding.decoder_for(lm)


def test_same_tokens_as_the_full_recompute_oracle(lm, pre, inputs):
    # 40 steps reach the relative-position buckets past the exact ones (16).
    actual, expected = decode_both(lm, inputs, **settings(pre, 40))
    np.testing.assert_array_equal(actual, expected)
    assert len({tuple(row) for row in actual}) > 10, "random weights gave one answer"
    ended = (actual == pre.end_token_id).any(axis=1)
    assert ended.any() and not ended.all()


def test_several_start_ids_fill_the_cache_first(lm, pre, inputs):
    actual, expected = decode_both(lm, inputs, **settings(pre, 10, decoder_start_ids=[0, 7, 9]))
    np.testing.assert_array_equal(actual, expected)


def test_return_contract(lm, pre, inputs):
    ids, _ = decode_both(lm, inputs, **settings(pre, 12))
    assert ids.dtype == np.int32 and ids.shape == (inputs["encoder_token_ids"].shape[0], 12)
    for row in ids:
        ends = np.flatnonzero(row == pre.end_token_id)
        if len(ends):
            assert (row[ends[0] + 1 :] == pre.pad_token_id).all()


def test_traceable_with_unknown_batch_without_retracing(lm, pre, inputs):
    spec = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[spec, spec])
    def generate(token_ids, padding_mask):
        return decoding.greedy_decode(lm, token_ids, padding_mask, **settings(pre, 12))

    eager = decoding.greedy_decode(
        lm, inputs["encoder_token_ids"], inputs["encoder_padding_mask"], **settings(pre, 12)
    ).numpy()
    for rows in (slice(0, 1), slice(0, 7), slice(None)):
        token_ids = inputs["encoder_token_ids"][rows]
        mask = inputs["encoder_padding_mask"][rows]
        # Trim the padding shared by these rows: a different input length.
        length = int(tf.reduce_max(tf.reduce_sum(mask, axis=1)))
        traced = generate(token_ids[:, :length], mask[:, :length]).numpy()
        np.testing.assert_array_equal(traced, eager[rows])
    assert generate.experimental_get_tracing_count() == 1


def test_stopping_early_or_not_gives_the_same_tokens(lm, pre, inputs):
    decoder = decoding.decoder_for(lm)
    args = (inputs["encoder_token_ids"], inputs["encoder_padding_mask"])
    early = decoder.greedy(*args, **settings(pre, 20))
    full = decoder.greedy(*args, **settings(pre, 20), stop_at_end=False)
    np.testing.assert_array_equal(early.numpy(), full.numpy())


def test_recomputing_fallback_matches_the_oracle(lm, pre, inputs):
    decoder = decoding.RecomputingDecoder(lm)
    args = (inputs["encoder_token_ids"][:8], inputs["encoder_padding_mask"][:8])
    actual = tf.function(lambda a, b: decoder.greedy(a, b, **settings(pre, 6)))(*args)
    expected = reference_greedy_decode(lm, *args, **settings(pre, 6))
    np.testing.assert_array_equal(actual.numpy(), expected.numpy())


def test_empty_batch(lm, pre):
    ids = decoding.greedy_decode(
        lm, tf.zeros([0, 3], tf.int32), tf.zeros([0, 3], tf.int32), **settings(pre, 5)
    )
    assert ids.shape == (0, 5)


def test_graph_has_no_xla_op(lm, pre):
    spec = tf.TensorSpec([None, None], tf.int32)
    function = tf.function(
        lambda a, b: decoding.greedy_decode(lm, a, b, **settings(pre, 4)),
        input_signature=[spec, spec],
    )
    graph = function.get_concrete_function().graph.as_graph_def()
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    ops = {node.op for node in nodes}
    assert "While" in ops or "StatelessWhile" in ops
    assert not [op for op in ops if "xla" in op.lower()]


@pytest.mark.parametrize(
    "overrides, message",
    [({"decoder_start_ids": []}, "decoder_start_ids"), ({"max_length": 0}, "max_length")],
)
def test_rejects_bad_settings(lm, pre, inputs, overrides, message):
    with pytest.raises(ValueError, match=message):
        decoding.greedy_decode(
            lm,
            inputs["encoder_token_ids"],
            inputs["encoder_padding_mask"],
            **{**settings(pre, 4), **overrides},
        )


# --- teacher-forced scoring of given targets ------------------------------------


def reference_log_probabilities(lm, token_ids, padding_mask, targets, start_ids):
    """Each (row, target) pair through the whole model on its own, log-softmax read off."""
    scores = []
    for row, row_targets in enumerate(targets):
        row_scores = []
        for target in row_targets:
            decoder_ids = list(start_ids) + list(target[:-1])
            logits = lm(
                {
                    "encoder_token_ids": token_ids[row : row + 1],
                    "encoder_padding_mask": padding_mask[row : row + 1],
                    "decoder_token_ids": tf.constant([decoder_ids]),
                    "decoder_padding_mask": tf.ones([1, len(decoder_ids)], tf.int32),
                },
                training=False,
            )[0, len(start_ids) - 1 :]
            log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1).numpy()
            row_scores.append(sum(log_probs[t, token] for t, token in enumerate(target)))
        scores.append(row_scores)
    return np.array(scores)


def padded_targets(targets):
    length = max(len(t) for row in targets for t in row)
    ids = [[list(t) + [0] * (length - len(t)) for t in row] for row in targets]
    mask = [[[1] * len(t) + [0] * (length - len(t)) for t in row] for row in targets]
    return tf.constant(ids), tf.constant(mask)


# Three rows, three candidates each, of different lengths (the end token 1 last).
TARGETS = [[[5, 1], [9, 12, 1], [30, 1]], [[7, 7, 7, 1], [1], [44, 3, 1]],
           [[5, 1], [6, 1], [8, 9, 10, 11, 1]]]


@pytest.mark.parametrize("decoder_class", [decoding.T5Decoder, decoding.RecomputingDecoder])
def test_sequence_log_probabilities_equal_the_full_model(lm, pre, inputs, decoder_class):
    token_ids = inputs["encoder_token_ids"][:3]
    padding_mask = inputs["encoder_padding_mask"][:3]
    ids, mask = padded_targets(TARGETS)
    actual = decoder_class(lm).sequence_log_probabilities(
        token_ids, padding_mask, ids, mask, decoder_start_ids=pre.decoder_start_ids)
    expected = reference_log_probabilities(lm, token_ids, padding_mask, TARGETS,
                                           pre.decoder_start_ids)
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_sequence_log_probabilities_with_several_start_ids(lm, inputs):
    token_ids = inputs["encoder_token_ids"][:3]
    padding_mask = inputs["encoder_padding_mask"][:3]
    ids, mask = padded_targets(TARGETS)
    actual = decoding.decoder_for(lm).sequence_log_probabilities(
        token_ids, padding_mask, ids, mask, decoder_start_ids=[0, 7])
    expected = reference_log_probabilities(lm, token_ids, padding_mask, TARGETS, [0, 7])
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_greedy_tokens_are_the_most_likely_single_token_target(lm, pre, inputs):
    """Scoring agrees with generation: greedy's first token beats every other one-token target."""
    token_ids = inputs["encoder_token_ids"][:4]
    padding_mask = inputs["encoder_padding_mask"][:4]
    first = decoding.greedy_decode(lm, token_ids, padding_mask, **settings(pre, 1))[:, 0]
    vocabulary = lm.backbone.vocabulary_size
    candidates = tf.range(vocabulary)[None, :, None] + tf.zeros([4, 1, 1], tf.int32)
    scores = decoding.decoder_for(lm).sequence_log_probabilities(
        token_ids, padding_mask, tf.concat([candidates, tf.ones_like(candidates)], axis=2),
        tf.concat([tf.ones_like(candidates), tf.zeros_like(candidates)], axis=2),
        decoder_start_ids=pre.decoder_start_ids)
    np.testing.assert_array_equal(tf.argmax(scores, axis=1).numpy(), first.numpy())


def test_sequence_log_probabilities_of_nothing(lm, pre):
    scores = decoding.decoder_for(lm).sequence_log_probabilities(
        tf.zeros([0, 3], tf.int32), tf.zeros([0, 3], tf.int32), tf.zeros([0, 2, 2], tf.int32),
        tf.zeros([0, 2, 2], tf.int32), decoder_start_ids=pre.decoder_start_ids)
    assert scores.shape == (0, 2)


def test_a_frozen_bfloat16_decoder_keeps_its_kernels_transposed(pre, inputs):
    from dss_keras.export_precision import with_precision

    half = with_precision(testing.tiny_seq2seq_lm(num_layers=2), "bfloat16")
    plain, frozen = decoding.decoder_for(half), decoding.decoder_for(half, frozen=True)
    assert plain.variables == []
    # Every decoder projection (2 layers x 11) and the output projection are replaced...
    assert len(frozen.replaced_variables) == 23
    # ...by 7 per layer: query-key-value, cross key-value and input-gate each stacked into one.
    assert len(frozen.variables) == 2 * 7 + 1
    assert sum(v.shape.num_elements() for v in frozen.variables) == sum(
        v.shape.num_elements() for v in frozen.replaced_variables)
    args = (inputs["encoder_token_ids"], inputs["encoder_padding_mask"])
    tokens = [decoder.greedy(*args, **settings(pre, 8)).numpy() for decoder in (plain, frozen)]
    assert (tokens[0] == tokens[1]).mean() > 0.9  # bfloat16 products summed in another order
    targets = tf.constant([[[5, 6, 1]]] * args[0].shape[0])
    scores = [decoder.sequence_log_probabilities(*args, targets, tf.ones_like(targets),
                                                 decoder_start_ids=[0]).numpy()
              for decoder in (plain, frozen)]
    np.testing.assert_allclose(scores[1], scores[0], rtol=0.05)


def test_a_frozen_float32_decoder_reads_the_models_own_kernels(lm):
    frozen = decoding.decoder_for(lm, frozen=True)
    assert frozen is not decoding.decoder_for(lm) and frozen.variables == []
