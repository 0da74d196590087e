"""The closed label set: candidates, one-pass scores equal to the model's, always a valid label."""

import numpy as np
import pytest
import tensorflow as tf

from dss_keras import decoding, label_scorer, testing
from dss_keras.label_scorer import LabelSet
from dss_keras.preprocessor import MultiTaskPreprocessor

CQA_LIKE = [
    "Where is a fox likely to live?\nAnswer Choices:\n(a) den\n(b) river bank\n(c) zoo",
    "What do rocks do?\nAnswer Choices:\n(a) sit\n(b) roll down a hill\n(c) fly\n(d) sing",
    "No choices in this one.",
    "Messy layout:\r\n  (A)  upper case  \r\n(b)\r\n(c) last one",
]


@pytest.fixture(scope="module")
def lm():
    return testing.tiny_seq2seq_lm(num_layers=2)


@pytest.fixture(scope="module")
def pre(lm):
    return MultiTaskPreprocessor.from_seq2seq_lm(lm, max_input_length=48, max_label_length=6)


def test_parse_and_spec_round_trip():
    labels = LabelSet.parse(" entailment,neutral , contradiction")
    assert labels == LabelSet(labels=("entailment", "neutral", "contradiction"))
    assert LabelSet.parse(labels.spec) == labels
    assert LabelSet.parse("choices") == LabelSet(choices=True) and LabelSet(choices=True).spec == "choices"


@pytest.mark.parametrize("spec", ["yes", "yes,yes", "yes,,no", ""])
def test_a_fixed_set_needs_two_distinct_labels(spec):
    with pytest.raises(ValueError, match="Received: labels="):
        LabelSet.parse(spec)


def test_fixed_labels_or_choices_not_both():
    with pytest.raises(ValueError, match="not both or neither"):
        LabelSet(labels=("a", "b"), choices=True)


def test_choices_are_the_texts_of_the_lettered_lines():
    candidates = LabelSet(choices=True).candidates(CQA_LIKE).to_list()
    assert candidates == [[b"den", b"river bank", b"zoo"],
                          [b"sit", b"roll down a hill", b"fly", b"sing"], [],
                          [b"upper case", b"last one"]]


def test_a_fixed_set_is_every_rows_candidates():
    candidates = LabelSet(labels=("yes", "no")).candidates(["a", "b", "c"])
    assert candidates.to_list() == [[b"yes", b"no"]] * 3


def test_label_sets_of_the_benchmarks():
    assert label_scorer.label_set_for_data("tfds:cqa") == LabelSet(choices=True)
    assert label_scorer.label_set_for_data("anli1").labels == ("entailment", "neutral",
                                                               "contradiction")
    assert label_scorer.label_set_for_data("svamp") is None
    assert label_scorer.label_set_for_data(None) is None


def reference_scores(lm, pre, text, candidates):
    """Each candidate through the whole model on its own: its tokens' summed log-probabilities."""
    inputs = pre.encode_inputs([text], "label")
    scores = []
    for candidate in candidates:
        _, target = pre.encode_target(tf.constant(candidate), "label")
        target = target.numpy().tolist()
        decoder_ids = pre.decoder_start_ids + target[:-1]
        logits = lm({**inputs, "decoder_token_ids": tf.constant([decoder_ids]),
                     "decoder_padding_mask": tf.ones([1, len(decoder_ids)], tf.int32)})[0]
        log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
        scores.append(sum(log_probs[t, token] for t, token in enumerate(target)))
    return np.array(scores)


def generate(lm, pre):
    decoder = decoding.decoder_for(lm)
    return lambda texts: decoder.generate_text(pre, texts, "label")


def test_choices_scored_as_the_model_scores_them(lm, pre):
    chosen = label_scorer.choose_label(decoding.decoder_for(lm), pre, CQA_LIKE,
                                       LabelSet(choices=True), generate(lm, pre))
    names = LabelSet(choices=True).candidates(CQA_LIKE).to_list()
    for row, (text, candidates) in enumerate(zip(CQA_LIKE, names)):
        if not candidates:
            continue
        scores = reference_scores(lm, pre, text, candidates)
        expected = np.exp(scores - scores.max()) / np.exp(scores - scores.max()).sum()
        k = len(candidates)
        np.testing.assert_allclose(chosen["probabilities"][row, :k], expected, atol=1e-5)
        assert (chosen["probabilities"][row, k:].numpy() == 0).all()
        assert chosen["label"][row].numpy() == candidates[int(np.argmax(scores))]
        assert chosen["candidates"][row, :k].numpy().tolist() == candidates


def test_a_row_without_choices_gets_the_generated_label(lm, pre):
    chosen = label_scorer.choose_label(decoding.decoder_for(lm), pre, CQA_LIKE,
                                       LabelSet(choices=True), generate(lm, pre))
    generated = generate(lm, pre)(CQA_LIKE[2:3])
    assert chosen["label"][2].numpy() == generated[0].numpy()
    assert (chosen["probabilities"][2].numpy() == 0).all()


def test_a_fixed_set_always_gives_one_of_its_labels(lm, pre):
    labels = LabelSet(labels=("yes", "no", "it depends on the weather"))
    texts = [record.input for record in testing.toy_records(12, seed=4)] + ["", " "]
    chosen = label_scorer.choose_label(decoding.decoder_for(lm), pre, texts, labels)
    assert set(chosen["label"].numpy().tolist()) <= {label.encode() for label in labels.labels}
    np.testing.assert_allclose(tf.reduce_sum(chosen["probabilities"], axis=1), 1.0, atol=1e-5)
    scores = reference_scores(lm, pre, texts[0], labels.labels)
    assert chosen["label"][0].numpy() == labels.labels[int(np.argmax(scores))].encode()


def test_an_empty_batch_and_a_batch_without_any_choice(lm, pre):
    decoder = decoding.decoder_for(lm)
    empty = label_scorer.choose_label(decoder, pre, tf.constant([], tf.string),
                                      LabelSet(choices=True), generate(lm, pre))
    assert empty["label"].shape == (0,) and empty["probabilities"].shape[0] == 0
    none = label_scorer.choose_label(decoder, pre, ["no choices", "none here"],
                                     LabelSet(choices=True), generate(lm, pre))
    assert none["label"].numpy().tolist() == generate(lm, pre)(["no choices", "none here"]
                                                               ).numpy().tolist()


def test_choices_need_a_generator_for_rows_without_them(lm, pre):
    with pytest.raises(ValueError, match="Received: generate=None"):
        label_scorer.choose_label(decoding.decoder_for(lm), pre, CQA_LIKE,
                                  LabelSet(choices=True))
