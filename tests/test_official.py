import dataclasses
import json
import os
import re
from pathlib import Path

import pytest

from dss_keras.data import official
from dss_keras.data.official import (
    NLI_SEPARATOR,
    load_benchmark,
    load_official,
    read_official,
    read_teacher_outputs,
    teacher_report,
)
from dss_keras.data.records import Record, RecordError

FIXTURES = Path(__file__).parent / "fixtures" / "official"


def official_dir() -> Path:
    """The release subset shipped for development (or `$DSS_DATA_DIR`)."""
    root = Path(os.environ.get("DSS_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    return root / "dss_official" if (root / "dss_official").is_dir() else root


@pytest.fixture(scope="module")
def real_dir():
    root = official_dir()
    if not (root / "cqa").is_dir() or not (root / "svamp").is_dir():
        pytest.skip(f"the release data is not available (set DSS_DATA_DIR): {root}")
    return root


# --- fixtures in the esnli and anli1 formats -------------------------------------


def test_esnli_fixture():
    result = read_official("esnli", FIXTURES / "good", "train")
    records = result.records
    assert [r.id for r in records] == [f"esnli-train-{i}" for i in range(4)]
    assert records[0].input == "A dog runs across a snowy field. </s> An animal is outside."
    assert [r.label for r in records] == ["entailment", "contradiction", "neutral", "entailment"]
    assert [r.llm_label for r in records] == ["entailment", "contradiction", "neutral", None]
    assert records[1].rationale == "The café is not her home."
    assert records[3].rationale is None
    assert list(result.parse_errors) == [3]
    report = result.report
    assert (report.num_records, report.num_unparsed, report.num_correct) == (4, 1, 3)
    assert report.label_accuracy == 0.75


def test_esnli_valid_and_test_fixtures():
    valid = read_official("esnli", FIXTURES / "good", "valid")
    assert [r.llm_label for r in valid.records] == ["entailment", None]  # "maybe" is no label
    assert "'maybe' is not one of" in valid.parse_errors[1]
    test = load_official("esnli", FIXTURES / "good", "test")
    assert test[0].llm_label == "entailment" and test[0].rationale == "A street is outdoors."


def test_anli1_fixture():
    result = read_official("anli1", FIXTURES / "good", "train")
    records = result.records
    assert [r.id for r in records] == ["a1-0001", "a1-0002", "a1-0003"]
    assert records[0].input == (
        "Río Verde is a town in Mexico, founded in 1617."
        + NLI_SEPARATOR
        + "Río Verde was founded in the 17th century."
    )
    assert [r.label for r in records] == ["entailment", "neutral", "contradiction"]
    assert [r.llm_label for r in records] == ["entailment", None, "contradiction"]
    assert str(result.report) == (
        "anli1 train: 3 records, 1 teacher outputs unparsed, "
        "teacher label accuracy 0.6667 (2/3)"
    )
    valid = load_official("anli1", FIXTURES / "good", "valid")
    assert valid[0].llm_label == "entailment"  # "Entailment", no final period
    test = read_official("anli1", FIXTURES / "good", "test")
    assert test.parse_errors == {1: "2 times the answer marker 'So the answer is'"}


def test_nli_separator_is_configurable():
    records = load_official("anli1", FIXTURES / "good", "test", nli_separator="\n")
    assert records[0].input == "The film opened in six cities.\nThe film opened in New York."


def test_without_teacher_needs_no_teacher_files(tmp_path):
    (tmp_path / "esnli").mkdir()
    source = FIXTURES / "good" / "esnli" / "esnli_test.json"
    (tmp_path / "esnli" / "esnli_test.json").write_text(source.read_text(encoding="utf-8"))
    result = read_official("esnli", tmp_path, "test", with_teacher=False)
    assert result.report is None
    assert result.records == [
        Record("esnli-test-0", "Three people walk down a street. </s> People are outdoors.",
               "entailment")
    ]
    with pytest.raises(FileNotFoundError, match=r"llm: missing folder of teacher outputs"):
        read_official("esnli", tmp_path, "test")


def test_nli_benchmarks_have_valid_splits_and_no_carving():
    assert len(load_benchmark("esnli", FIXTURES / "good", "valid")) == 2
    assert len(load_benchmark("anli1", FIXTURES / "good", "train")) == 3


# --- malformed releases ------------------------------------------------------------


def test_wrong_batch_size_names_the_file():
    with pytest.raises(ValueError) as error:
        read_official("anli1", FIXTURES / "wrong_batch_size", "train")
    message = str(error.value)
    assert message.startswith(str(FIXTURES / "wrong_batch_size" / "anli1" / "llm" / "train_CoT_0.json"))
    assert "holds 2 teacher outputs" in message and "must hold 3" in message


def test_missing_batch_names_the_file():
    with pytest.raises(FileNotFoundError) as error:
        read_official("esnli", FIXTURES / "missing_batch", "train")
    assert str(FIXTURES / "missing_batch" / "esnli" / "llm" / "train_CoT_0.json") in str(error.value)
    assert "<data_dir>/<name>/llm/<split>_CoT_<k>.json" in str(error.value)


def test_batch_beyond_the_split_names_the_file():
    with pytest.raises(ValueError, match=r"test_CoT_1\.json: batch 1 starts at example 5500"):
        read_official("esnli", FIXTURES / "extra_batch", "test")


def test_missing_split_file_says_which_file_and_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_official("esnli", FIXTURES / "missing_batch", "test")
    message = str(error.value)
    assert str(FIXTURES / "missing_batch" / "esnli" / "esnli_test.json") in message
    assert "<data_dir>/<name>/<name>_<split>.json" in message
    with pytest.raises(FileNotFoundError, match="cqa_train.json"):
        load_official("cqa", tmp_path, "train")


def test_invalid_json_line_names_file_and_line():
    path = FIXTURES / "invalid_json" / "anli1" / "anli1_test.json"
    with pytest.raises(RecordError, match=re.escape(f"{path}:2: invalid JSON")) as error:
        load_official("anli1", FIXTURES / "invalid_json", "test")
    assert error.value.line == 2


def test_invalid_json_teacher_file_names_it():
    with pytest.raises(RecordError, match=r"test_CoT_0\.json:\d+: invalid JSON"):
        load_official("esnli", FIXTURES / "invalid_json_teacher", "test")


def test_bad_gold_label_names_file_line_and_field():
    with pytest.raises(RecordError, match=r'esnli_test\.json:2: field "label": expected 0, 1 or 2'):
        load_official("esnli", FIXTURES / "bad_label", "test", with_teacher=False)


def _write_release(root, name, rows, batches):
    folder = root / name
    (folder / "llm").mkdir(parents=True)
    with open(folder / f"{name}_train.json", "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    for k, batch in enumerate(batches):
        (folder / "llm" / f"train_CoT_{k}.json").write_text(json.dumps(batch))


def test_batches_are_read_in_numeric_order(tmp_path, monkeypatch):
    # 21 examples in batches of 2: train_CoT_10.json sorts before _2 as text.
    benchmark = dataclasses.replace(official.SPECS["svamp"], teacher_batch_size=2)
    monkeypatch.setitem(official.SPECS, "svamp", benchmark)
    rows = [{"input": f"Q{i}", "label": f"( {i}.0 + 1.0 )"} for i in range(21)]
    outputs = [f"Step {i}. The answer is ({i} + 1).\n\nQ: x" for i in range(21)]
    _write_release(tmp_path, "svamp", rows, [outputs[i : i + 2] for i in range(0, 21, 2)])
    records = load_official("svamp", tmp_path, "train")
    assert [r.llm_label for r in records] == [f"({i} + 1)" for i in range(21)]
    assert [r.rationale for r in records] == [f"Step {i}." for i in range(21)]
    assert teacher_report("svamp", records).label_accuracy == 1.0


def test_a_short_middle_batch_is_an_error(tmp_path, monkeypatch):
    benchmark = dataclasses.replace(official.SPECS["svamp"], teacher_batch_size=2)
    monkeypatch.setitem(official.SPECS, "svamp", benchmark)
    rows = [{"input": f"Q{i}", "label": "( 1.0 )"} for i in range(4)]
    _write_release(tmp_path, "svamp", rows, [["a"], ["b", "c", "d"]])
    with pytest.raises(ValueError, match=r"train_CoT_0\.json: holds 1 teacher outputs"):
        read_teacher_outputs("svamp", tmp_path, "train", 4)


def test_bad_rows_are_reported(tmp_path):
    _write_release(tmp_path, "svamp", [{"input": "x", "label": "( x + 1 )"}], [])
    with pytest.raises(RecordError, match=r'svamp_train\.json:1: field "label": equation'):
        load_official("svamp", tmp_path, "train", with_teacher=False)
    _write_release(tmp_path / "b", "cqa", [{"id": "1", "question": "q", "choices": ["a"],
                                             "answer": "a"}], [])
    with pytest.raises(RecordError, match=r'field "choices": expected a list of 5 strings'):
        load_official("cqa", tmp_path / "b", "train", with_teacher=False)
    row = {"id": "1", "question": "q", "choices": list("abcde"), "answer": "a"}
    _write_release(tmp_path / "c", "cqa", [row, row], [])
    with pytest.raises(RecordError, match=r"cqa_train\.json:2: field \"id\": duplicate id '1'"):
        load_official("cqa", tmp_path / "c", "train", with_teacher=False)


def test_argument_errors():
    with pytest.raises(ValueError, match="name='gsm8k'"):
        load_official("gsm8k", FIXTURES / "good", "train")
    with pytest.raises(ValueError, match="carves a valid split"):
        load_official("cqa", FIXTURES / "good", "valid")
    with pytest.raises(ValueError, match="split='dev'"):
        load_benchmark("esnli", FIXTURES / "good", "dev")
    with pytest.raises(ValueError, match="train split only"):
        load_benchmark("esnli", FIXTURES / "good", "test", train_fraction=0.5)


# --- the real cqa and svamp files ------------------------------------------------


@pytest.fixture(scope="module")
def cqa_train(real_dir):
    return read_official("cqa", real_dir, "train")


def test_real_cqa(real_dir, cqa_train):
    assert str(cqa_train.report) == (
        "cqa train: 9741 records, 287 teacher outputs unparsed, "
        "teacher label accuracy 0.7529 (7334/9741)"
    )
    test = read_official("cqa", real_dir, "test").report
    assert (test.num_records, test.num_unparsed, test.num_correct) == (1221, 25, 955)
    first = cqa_train.records[0]
    assert first.id == "6b819727eb8a670df26a7ffad036c119"
    assert first.label == "math problem" and first.llm_label == "math problem"
    assert first.input.endswith(
        "What is this an example of?\nAnswer Choices:\n(a) park\n(b) coloring book\n"
        "(c) garden center\n(d) math problem\n(e) gravity"
    )


def test_real_cqa_input_has_the_layout_of_the_teacher_prompts(real_dir, cqa_train):
    """The few-shot questions inside the completions show the prompt layout."""
    layout = re.compile(r"[^\n]+(?:\n[^\n]+)*?\nAnswer Choices:\n" + r"\n".join(
        rf"\({letter}\) [^\n]*" for letter in "abcde"))
    batch = json.loads((real_dir / "cqa" / "llm" / "train_CoT_0.json").read_text())
    prompts = [m.group(1) for text in batch[:50] for m in re.finditer(r"Q: (.*?)\nA:", text, re.S)]
    assert prompts and all(layout.fullmatch(p) for p in prompts)
    assert all(layout.fullmatch(r.input) for r in cqa_train.records[:500])


def test_real_svamp(real_dir):
    train = read_official("svamp", real_dir, "train")
    assert str(train.report) == (
        "svamp train: 800 records, 14 teacher outputs unparsed, teacher label accuracy "
        "0.7425 (594/800), 20 teacher equations without a value"
    )
    test = read_official("svamp", real_dir, "test").report
    assert (test.num_unparsed, test.num_correct, test.num_without_value) == (2, 155, 5)
    first = train.records[0]
    assert first.id == "svamp-train-0"
    assert (first.label, first.llm_label) == ("( 84.0 / 2.0 )", "(84 / 2)")


def test_real_load_benchmark_splits(real_dir):
    for name, total in (("cqa", 9741), ("svamp", 800)):
        train = load_benchmark(name, real_dir, "train")
        valid = load_benchmark(name, real_dir, "valid")
        assert len(valid) == round(total / 10) and len(train) + len(valid) == total
        assert not {r.id for r in train} & {r.id for r in valid}
    quarter = load_benchmark("svamp", real_dir, "train", train_fraction=0.25, seed=3)
    half = load_benchmark("svamp", real_dir, "train", train_fraction=0.5, seed=3)
    assert len(quarter) == 180 and set(quarter) <= set(half)
    assert quarter == load_benchmark("svamp", real_dir, "train", train_fraction=0.25, seed=3)
    assert len(load_benchmark("svamp", real_dir, "test")) == 200
