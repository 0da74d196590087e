"""`MultiTaskPreprocessor`: prefixes, token budgets and the sequence layout of each task."""

import numpy as np
import pytest
import tensorflow as tf

from dss_keras import testing
from dss_keras.preprocessor import MultiTaskPreprocessor


@pytest.fixture(scope="module")
def preprocessor():
    return MultiTaskPreprocessor.from_seq2seq_lm(
        testing.tiny_seq2seq_lm(), max_input_length=12, max_label_length=4,
        max_rationale_length=6)


def _ids(preprocessor, text):
    return [int(i) for i in preprocessor.tokenizer(text)]


def test_the_task_prefix_goes_before_the_input(preprocessor):
    for task, prefix in (("label", "predict: "), ("rationale", "explain: ")):
        ids = preprocessor.encode_input(tf.constant("Ana has 3 cups."), task).numpy().tolist()
        expected = _ids(preprocessor, prefix + "Ana has 3 cups.")
        assert ids == expected[:11] + [1]  # cut to the budget, then the end token


def test_targets_are_shifted_by_one_from_the_pad_start_and_end_with_the_end_token(preprocessor):
    decoder, target = preprocessor.encode_target(tf.constant("5"), "label")
    tokens = _ids(preprocessor, "5")
    assert decoder.numpy().tolist() == [0] + tokens  # T5's decoder starts from pad
    assert target.numpy().tolist() == tokens + [1]


def test_each_task_has_its_own_target_budget(preprocessor):
    long = "Dee starts with 10. 10 - 5 = 5. Then 5 + 3 = 8."
    for task, budget in (("label", 4), ("rationale", 6)):
        _, target = preprocessor.encode_target(tf.constant(long), task)
        assert len(target) == budget and int(target[-1]) == 1


def test_padding_masks_come_from_lengths_not_from_the_pad_id(preprocessor):
    example = preprocessor.pack_task(tf.constant("Ana has 3 cups."), tf.constant("3"), "label")
    assert int(example["decoder_token_ids"][0]) == 0  # the pad id...
    assert int(example["decoder_padding_mask"][0]) == 1  # ...is a real position here


def test_a_batch_of_inputs_encodes_as_single_inputs_do(preprocessor):
    texts = ["Ana has 3 cups.", "Bo has 12 pens. Then Bo finds 4 more. How many?"]
    batch = preprocessor.encode_inputs(texts, "rationale")
    for row, text in enumerate(texts):
        single = preprocessor.encode_input(tf.constant(text), "rationale").numpy()
        length = int(batch["encoder_padding_mask"][row].numpy().sum())
        np.testing.assert_array_equal(batch["encoder_token_ids"][row][:length], single)


def test_decode_cuts_at_the_end_token_and_drops_special_ids(preprocessor):
    ids = _ids(preprocessor, "Ana has 3")
    rows = [[0, *ids, 1, *ids], ids + [0] * (len(ids) + 2)]
    decoded = preprocessor.decode(rows).numpy()
    assert [d.decode() for d in decoded] == ["Ana has 3", "Ana has 3"]


def test_config_round_trip_and_unknown_task(preprocessor):
    again = MultiTaskPreprocessor.from_config(preprocessor.get_config())
    assert again.get_config()["max_rationale_length"] == 6
    assert again.prefix("rationale") == "explain: "
    with pytest.raises(ValueError, match="Received: task='explanation'"):
        preprocessor.prefix("explanation")
    with pytest.raises(ValueError, match="max_label_length"):
        MultiTaskPreprocessor(preprocessor.tokenizer, max_label_length=0)
