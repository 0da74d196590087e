import json

import pytest

from dss_keras.data.records import (
    Record,
    RecordError,
    read_csv,
    read_jsonl,
    read_records,
    write_csv,
    write_jsonl,
)

RECORDS = [
    Record("a", "Dee has 10 rocks.", "10", "Dee has 10.", "10"),
    Record("b", "Ünïcode, \"quotes\", commas\nand lines", "x", None, None),
]


@pytest.mark.parametrize("suffix", ["jsonl", "csv"])
def test_round_trip(tmp_path, suffix):
    path = tmp_path / f"data.{suffix}"
    (write_jsonl if suffix == "jsonl" else write_csv)(RECORDS, path)
    assert read_records(path) == RECORDS


def _write_lines(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    "line, field, message",
    [
        ('{"id": "1", "input": "x", "label": "y", "rationale": 3}', "rationale",
         'expected a string or null, received int 3'),
        ('{"id": "1", "input": "x", "label": null}', "label", "expected a string, received null"),
        ('{"id": "1", "input": "x"}', "label", "missing"),
        ('{"id": "1", "input": "x", "label": "y", "rationale_": "z"}', "rationale_",
         "unknown field"),
        ('{"id": [1], "input": "x", "label": "y"}', "id", "expected a string"),
    ],
)
def test_bad_jsonl_record_names_file_line_and_field(tmp_path, line, field, message):
    good = json.dumps(RECORDS[0].to_dict())
    path = _write_lines(tmp_path, [good, "", line])
    with pytest.raises(RecordError) as error:
        read_jsonl(path)
    assert str(error.value).startswith(f'{path}:3: field "{field}": ')
    assert message in str(error.value)
    assert (error.value.path, error.value.line, error.value.field) == (path, 3, field)


def test_invalid_json_names_the_line(tmp_path):
    path = _write_lines(tmp_path, [json.dumps(RECORDS[0].to_dict()), "{not json"])
    with pytest.raises(RecordError, match=r":2: invalid JSON"):
        read_jsonl(path)


def test_non_object_line(tmp_path):
    path = _write_lines(tmp_path, ['["a", "b"]'])
    with pytest.raises(RecordError, match=r":1: expected a JSON object, received list"):
        read_jsonl(path)


def test_duplicate_ids_are_an_error(tmp_path):
    line = json.dumps(RECORDS[0].to_dict())
    path = _write_lines(tmp_path, [line, line])
    with pytest.raises(RecordError, match=r':2: field "id": duplicate id .* \(first on line 1\)'):
        read_jsonl(path)


def test_integer_ids_become_strings(tmp_path):
    path = _write_lines(tmp_path, ['{"id": 7, "input": "x", "label": "y"}'])
    assert read_jsonl(path)[0].id == "7"


def test_csv_errors_name_the_line(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,input,label\n1,x,y\n2,x,y,extra\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r"data.csv:3: more cells"):
        read_csv(path)
    path.write_text("id,input\n1,x\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r'data.csv:1: field "label": missing column'):
        read_csv(path)
    # A row with a cell too few is an error, not an empty or null field.
    path.write_text("id,input,label,rationale\n1,x,y,r\n2,x,y\n", encoding="utf-8")
    with pytest.raises(RecordError, match=r'data.csv:3: field "rationale": missing cell'):
        read_csv(path)


@pytest.mark.parametrize("name", ["data.jsonl", "data.csv"])
def test_bytes_that_are_not_utf8_name_the_line(tmp_path, name):
    path = tmp_path / name
    good = ('{"id": "%d", "input": "x", "label": "y"}\n' if name.endswith("jsonl")
            else "%d,x,y\n")
    head = "" if name.endswith("jsonl") else "id,input,label\n"
    lines = head + "".join(good % i for i in range(1, 6))
    path.write_bytes(lines.encode() + b'{"id": "7", "input": "caf\xe9", "label": "y"}\n'
                     if name.endswith("jsonl") else lines.encode() + b"7,caf\xe9,y\n")
    with pytest.raises(RecordError, match=rf"{name}:[67]: not valid UTF-8: byte 0xe9 at column"):
        read_records(path)


def test_records_know_where_they_were_read(tmp_path):
    path = _write_lines(tmp_path, ['{"id": "a", "input": "x", "label": "y"}', "",
                                   '{"id": "b", "input": "x", "label": "y"}'])
    assert [r.where() for r in read_jsonl(path)] == [f"{path}:1", f"{path}:3"]
    assert "origin" not in read_jsonl(path)[0].to_dict()


def test_csv_empty_optional_cells_are_null(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text("id,input,label,rationale\n1,x,y,\n", encoding="utf-8")
    assert read_csv(path) == [Record("1", "x", "y", None, None)]


def test_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"\.jsonl or \.csv"):
        read_records(tmp_path / "data.txt")


def test_training_label():
    record = RECORDS[0]
    assert record.training_label("gt") == "10"
    assert RECORDS[1].training_label("llm") is None
    with pytest.raises(ValueError, match="label_source"):
        record.training_label("teacher")
