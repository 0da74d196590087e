"""The vocabulary of a model trained from scratch: what it learns from, and where it lives."""

import keras_hub
import pytest

from dss_keras import testing
from dss_keras.data.records import Record
from dss_keras.vocabulary import (load_or_train, train_sentencepiece, train_vocabulary,
                                  vocabulary_texts)


def test_sentencepiece_vocabulary_has_t5_special_ids_and_split_digits():
    proto = train_sentencepiece(["Dee has 1234 rocks."] * 50, vocabulary_size=40)
    tokenizer = keras_hub.models.T5Tokenizer(proto=proto)
    assert (tokenizer.pad_token_id, tokenizer.end_token_id) == (0, 1)
    assert tokenizer.id_to_token(2) == "<unk>"
    pieces = [tokenizer.id_to_token(int(i)) for i in tokenizer("1234")]
    assert [p.strip("▁") for p in pieces if p.strip("▁")] == ["1", "2", "3", "4"]


def test_it_learns_every_text_of_the_training_records_and_the_prefixes():
    record = Record(id="a", input="Is ice cold?", label="yes", rationale="Ice is frozen.",
                    llm_label="yep")
    texts = vocabulary_texts([record], "ask: ", "why: ")
    assert texts == ["ask: why: ", "Is ice cold?", "yes", "Ice is frozen.", "yep"]
    assert vocabulary_texts([Record(id="b", input="x", label="y")]) == [
        "predict: explain: ", "x", "y"]


def test_a_word_only_in_rationales_gets_pieces_of_its_own():
    records = [Record(id=str(i), input=f"Ana has {i} cups.", label=str(i),
                      rationale="Zyxwv counts them.") for i in range(40)]
    tokenizer = keras_hub.models.T5Tokenizer(proto=train_vocabulary(records, 80))
    assert tokenizer.token_to_id("<unk>") not in [int(i) for i in tokenizer("Zyxwv")]


def test_stored_once_and_read_back(tmp_path):
    path = str(tmp_path / "run" / "vocabulary.spm")
    proto = load_or_train(path, testing.toy_records(40), vocabulary_size=120)
    assert open(path, "rb").read() == proto
    assert load_or_train(path, [], vocabulary_size=999) == proto  # not trained again


def test_no_records_is_an_error_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="vocabulary.spm: there are no training records"):
        load_or_train(str(tmp_path / "vocabulary.spm"), [], vocabulary_size=50)
