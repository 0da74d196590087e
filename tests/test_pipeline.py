import numpy as np
import pytest
import tensorflow as tf

from dss_keras import testing
from dss_keras.data import make_dataset
from dss_keras.data.records import Record


def _decode_input(model, ids, mask):
    tokens = [int(t) for t, m in zip(ids, mask) if m]
    return model.preprocessor.decode(tf.constant([tokens + [1]])).numpy()[0].decode()


def test_batches_hold_both_targets_of_the_same_examples(tiny_model):
    from dss_keras.model import DistillStepByStep

    tiny_model = DistillStepByStep(tiny_model.seq2seq_lm, max_rationale_length=48)
    records = testing.toy_records(24)
    by_input = {r.input: r for r in records}
    dataset, _ = make_dataset(records, tiny_model.preprocessor, batch_size=5, seed=3)
    pre = tiny_model.preprocessor
    seen = 0
    for x, y, w in dataset:
        for row in range(x["label"]["encoder_token_ids"].shape[0]):
            label_input = _decode_input(tiny_model, x["label"]["encoder_token_ids"][row].numpy(),
                                        x["label"]["encoder_padding_mask"][row].numpy())
            rationale_input = _decode_input(
                tiny_model, x["rationale"]["encoder_token_ids"][row].numpy(),
                x["rationale"]["encoder_padding_mask"][row].numpy())
            assert label_input.startswith("predict: ")
            assert rationale_input.startswith("explain: ")
            text = label_input[len("predict: "):]
            assert text == rationale_input[len("explain: "):]
            record = by_input[text]
            label = pre.decode(y["label"][row:row + 1]).numpy()[0].decode()
            rationale = pre.decode(y["rationale"][row:row + 1]).numpy()[0].decode()
            assert label == record.label
            assert rationale == record.rationale
            seen += 1
    assert seen == len(records)


def test_padding_only_as_far_as_the_batch_needs(tiny_model):
    records = testing.toy_records(40)
    dataset, _ = make_dataset(records, tiny_model.preprocessor, batch_size=8)
    for x, y, w in dataset:
        for task in ("label", "rationale"):
            mask = x[task]["encoder_padding_mask"].numpy()
            # The longest row of every batch fills the whole width.
            assert mask.sum(axis=1).max() == mask.shape[1]
            assert w[task].numpy().sum(axis=1).max() == w[task].shape[1]
            # Masks come from lengths: the decoder start (pad id 0) is visible.
            assert (x[task]["decoder_padding_mask"].numpy()[:, 0] == 1).all()
            assert (x[task]["decoder_token_ids"].numpy()[:, 0] == 0).all()


def test_bucketing_reduces_padding(tiny_model):
    records = [
        Record(str(i), "Ana has 3 cups." if i % 2 else "word " * 30, "3", "x " * (1 + i % 7))
        for i in range(64)
    ]

    def padding_share(boundaries):
        dataset, _ = make_dataset(records, tiny_model.preprocessor, batch_size=8,
                                  bucket_boundaries=boundaries)
        real = total = 0
        for x, _, _ in dataset:
            mask = x["label"]["encoder_padding_mask"].numpy()
            real, total = real + mask.sum(), total + mask.size
        return 1 - real / total

    assert padding_share(None) < 0.5 * padding_share([])


def test_truncation_to_the_length_budgets(tiny_model):
    pre = tiny_model.preprocessor
    long_text = "Dee has 10 rocks. " * 40
    record = Record("1", long_text, long_text, long_text)
    dataset, _ = make_dataset([record], pre, batch_size=1)
    x, y, w = next(iter(dataset))
    assert x["label"]["encoder_token_ids"].shape[1] == pre.max_input_length
    assert x["label"]["encoder_token_ids"][0, -1] == pre.end_token_id
    assert y["label"].shape[1] == pre.max_label_length
    assert y["rationale"].shape[1] == pre.max_rationale_length
    assert y["label"][0, -1] == pre.end_token_id


def test_shuffle_is_deterministic_for_a_seed(tiny_model):
    records = testing.toy_records(32)

    def first_ids(seed):
        dataset, _ = make_dataset(records, tiny_model.preprocessor, batch_size=8, seed=seed,
                                  bucket_boundaries=[])
        return [x["label"]["encoder_token_ids"].numpy().tolist() for x, _, _ in dataset]

    assert first_ids(1) == first_ids(1)
    assert first_ids(1) != first_ids(2)


def test_report_counts_records_left_out(tiny_model):
    records = testing.toy_records(10)
    records = [
        Record(r.id, r.input, r.label, None if i < 3 else r.rationale,
               None if i >= 8 else r.llm_label)
        for i, r in enumerate(records)
    ]
    _, report = make_dataset(records, tiny_model.preprocessor, label_source="llm")
    assert (report.num_records, report.num_examples) == (10, 8)
    assert report.missing_label == 2
    assert report.without_rationale == 3
    _, report = make_dataset(records, tiny_model.preprocessor, mode="standard")
    assert report.without_rationale == 0 and report.num_examples == 10


def test_rationale_weights_are_zero_without_a_rationale(tiny_model):
    records = [Record("1", "Ana has 3 cups.", "3", None), Record("2", "Bo has 2.", "2", "Bo has 2.")]
    dataset, _ = make_dataset(records, tiny_model.preprocessor, batch_size=2, shuffle=False,
                              bucket_boundaries=[])
    x, y, w = next(iter(dataset))
    weights = w["rationale"].numpy()
    assert weights[0].sum() == 0 and weights[1].sum() > 0
    assert (w["label"].numpy().sum(axis=1) > 0).all()


def test_standard_mode_has_only_the_label_task(tiny_model):
    dataset, _ = make_dataset(testing.toy_records(4), tiny_model.preprocessor,
                              mode="standard")
    x, y, w = next(iter(dataset))
    assert list(x) == list(y) == list(w) == ["label"]


def test_label_source_llm_trains_on_teacher_labels(tiny_model):
    record = Record("1", "Ana has 3 cups.", label="3", rationale="r", llm_label="4")
    dataset, _ = make_dataset([record], tiny_model.preprocessor, label_source="llm")
    _, y, _ = next(iter(dataset))
    assert tiny_model.preprocessor.decode(y["label"]).numpy()[0].decode() == "4"


@pytest.mark.parametrize(
    "kwargs, match",
    [({"mode": "both"}, "mode"), ({"label_source": "human"}, "label_source"),
     ({"batch_size": 0}, "batch_size")],
)
def test_invalid_arguments(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(testing.toy_records(2), tiny_model.preprocessor, **kwargs)


def test_no_usable_record_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="No record has a label"):
        make_dataset([Record("1", "a", "b")], tiny_model.preprocessor, label_source="llm")
