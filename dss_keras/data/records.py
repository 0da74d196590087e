"""The one record every data source produces, and its JSONL/CSV files.

A record is one training or evaluation example:

```
{"id": "...", "input": "...", "label": "...", "rationale": "..." | null,
 "llm_label": "..." | null, "teacher": {...}}
```

`label` is the human (gold) label, `llm_label` the teacher's label and
`rationale` the teacher's explanation. `teacher` (optional, JSON only) holds
what `dss-keras extract` stored about the teacher's output: model, prompt
version, sampling settings, raw completions, parse status and token usage.
A record written by the teacher may have a null `label` (an input without a
human label): it trains with `label_source="llm"` only. Files are validated while they are
read: a bad record raises `RecordError` naming the file, the line and the
field, and nothing is silently dropped.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
from typing import Iterable, Iterator, Sequence

from dss_keras.config import LABEL_SOURCES
from dss_keras.files import write_text


_REQUIRED_STRING_FIELDS = ("id", "input", "label")
_OPTIONAL_STRING_FIELDS = ("rationale", "llm_label")
# The columns of a CSV file; JSON records may also carry a `teacher` object.
FIELDS = _REQUIRED_STRING_FIELDS + _OPTIONAL_STRING_FIELDS
JSON_FIELDS = FIELDS + ("teacher",)


class RecordError(ValueError):
    """A record that does not follow the schema.

    The message reads `path:line: field "name": what is wrong`, so that an
    editor or a terminal can jump to the offending line.
    """

    def __init__(self, path: str, line: int, field: str | None, message: str):
        self.path = path
        self.line = line
        self.field = field
        where = f"{path}:{line}: "
        if field is not None:
            where += f'field "{field}": '
        super().__init__(where + message)


@dataclasses.dataclass(frozen=True)
class Record:
    """One example: an input, its gold label and the teacher's output.

    Args:
        id: A stable identifier, unique within a dataset.
        input: The text the student reads (without a task prefix).
        label: The human label, or `None` for an input that only the
            teacher labelled (allowed in records with `teacher` output).
        rationale: The teacher's rationale, or `None` when there is none
            (no teacher output, or one that could not be parsed).
        llm_label: The teacher's label, or `None`.
        teacher: What the teacher extraction stored about this output (see
            `dss_keras.teacher`), or `None`. Not part of CSV files.
        origin: Where the record was read, `"path:line"` (set by the
            readers, for error messages); not part of the record's data.

    Examples:

    >>> record = Record(id="1", input="2 + 3?", label="5", rationale="2 + 3 = 5.")
    >>> record.training_label("gt")
    '5'
    >>> record.training_label("llm") is None
    True
    """

    id: str
    input: str
    label: str | None
    rationale: str | None = None
    llm_label: str | None = None
    teacher: dict | None = dataclasses.field(default=None, compare=False, repr=False)
    origin: str | None = dataclasses.field(default=None, compare=False, repr=False)

    def training_label(self, label_source: str) -> str | None:
        """The label that trains the label task for `label_source`."""
        check_label_source(label_source)
        return self.label if label_source == "gt" else self.llm_label

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        del data["origin"]
        if data["teacher"] is None:
            del data["teacher"]
        return data

    def where(self) -> str:
        """`path:line` of the record, or its id when it was not read from a file."""
        return self.origin or f"record {self.id!r}"


def check_label_source(label_source: str) -> None:
    if label_source not in LABEL_SOURCES:
        raise ValueError(
            f"`label_source` must be one of {LABEL_SOURCES}. "
            f"Received: label_source={label_source!r}"
        )


def _describe(value) -> str:
    if value is None:
        return "null"
    return f"{type(value).__name__} {json.dumps(value)[:60]}"


def record_from_dict(data, path: str = "<dict>", line: int = 0) -> Record:
    """Validates one mapping against the schema and returns a `Record`.

    Raises:
        RecordError: naming `path`, `line` and the offending field.
    """
    if not isinstance(data, dict):
        raise RecordError(
            path, line, None, f"expected a JSON object, received {_describe(data)}"
        )
    unknown = sorted(set(data) - set(JSON_FIELDS))
    if unknown:
        raise RecordError(
            path,
            line,
            unknown[0],
            f"unknown field; a record has the fields {', '.join(JSON_FIELDS)}",
        )
    teacher = data.get("teacher")
    if teacher is not None and not isinstance(teacher, dict):
        raise RecordError(
            path, line, "teacher", f"expected an object or null, received {_describe(teacher)}"
        )
    values = {"teacher": teacher, "origin": f"{path}:{line}" if line else None}
    for field in _REQUIRED_STRING_FIELDS:
        if field not in data:
            raise RecordError(path, line, field, "missing")
        value = data[field]
        if field == "id" and isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if field == "label" and value is None and teacher is not None:
            values[field] = None  # an input that only the teacher labelled
            continue
        if not isinstance(value, str):
            hint = " (only teacher records may have a null label)" if field == "label" else ""
            raise RecordError(
                path, line, field, f"expected a string, received {_describe(value)}{hint}"
            )
        values[field] = value
    for field in _OPTIONAL_STRING_FIELDS:
        value = data.get(field)
        if value is not None and not isinstance(value, str):
            raise RecordError(
                path,
                line,
                field,
                f"expected a string or null, received {_describe(value)}",
            )
        values[field] = value
    return Record(**values)


def _check_unique_ids(records: Sequence[Record], lines: Sequence[int], path: str):
    seen = {}
    for record, line in zip(records, lines):
        if record.id in seen:
            raise RecordError(
                path,
                line,
                "id",
                f"duplicate id {record.id!r} (first on line {seen[record.id]})",
            )
        seen[record.id] = line


def _utf8_error(path: str, line: int, text: bytes, error: UnicodeDecodeError) -> RecordError:
    return RecordError(
        path, line, None,
        f"not valid UTF-8: byte 0x{text[error.start]:02x} at column {error.start + 1}; "
        "save the file as UTF-8",
    )


def iter_json_lines(path: str) -> Iterator[tuple[int, object]]:
    """Yields `(line number, parsed value)` of a JSON Lines file, skipping blank lines.

    Raises:
        RecordError: naming the file and line of invalid JSON or UTF-8.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise _utf8_error(path, number, raw, e) from None
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as e:
                raise RecordError(path, number, None, f"invalid JSON: {e.msg}") from None


def read_jsonl(path: str | os.PathLike) -> list[Record]:
    """Reads records from a JSON Lines file (one object per line).

    Blank lines are skipped. Ids must be unique.

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train.jsonl")
    >>> write_jsonl([Record("a", "1 + 1?", "2", "1 + 1 = 2.")], path)
    >>> read_jsonl(path)[0].rationale
    '1 + 1 = 2.'
    """
    path = os.fspath(path)
    records, lines = [], []
    for number, data in iter_json_lines(path):
        records.append(record_from_dict(data, path, number))
        lines.append(number)
    _check_unique_ids(records, lines, path)
    return records


def write_jsonl(records: Iterable[Record], path: str | os.PathLike) -> None:
    """Writes records as JSON Lines, atomically (`dss_keras.files`)."""
    write_text(path, "".join(json.dumps(record.to_dict(), ensure_ascii=False) + "\n"
                             for record in records))


def _read_text(path: str) -> str:
    """The whole file as text; a byte that is not UTF-8 is an error naming its line."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        error = UnicodeDecodeError(e.encoding, data[start:], e.start - start, e.end - start,
                                   e.reason)
        raise _utf8_error(path, line, data[start:], error) from None


def read_csv(path: str | os.PathLike) -> list[Record]:
    """Reads records from a CSV file with a header row.

    The header names the record fields: `id`, `input` and `label` must be
    there, `rationale` and `llm_label` may be (an empty cell in them means
    null). Every row has exactly one cell per column.
    """
    path = os.fspath(path)
    records, lines = [], []
    reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
    if reader.fieldnames is None:
        raise RecordError(path, 1, None, "empty file; expected a header row")
    for field in _REQUIRED_STRING_FIELDS:
        if field not in reader.fieldnames:
            raise RecordError(path, 1, field,
                              f"missing column; the header is {','.join(reader.fieldnames)}")
    for row in reader:
        line = reader.line_num
        if None in row:
            raise RecordError(path, line, None, "more cells than header columns")
        missing = [k for k, v in row.items() if v is None]
        if missing:
            raise RecordError(path, line, missing[0],
                              f"missing cell: the row has {len(row) - len(missing)} cells, "
                              f"the header {len(row)}")
        data = {k: (None if k in _OPTIONAL_STRING_FIELDS and v == "" else v)
                for k, v in row.items()}
        records.append(record_from_dict(data, path, line))
        lines.append(line)
    _check_unique_ids(records, lines, path)
    return records


def write_csv(records: Iterable[Record], path: str | os.PathLike) -> None:
    """Writes records as CSV with a header row (null becomes an empty cell), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIELDS)
    writer.writeheader()
    for record in records:
        row = record.to_dict()
        writer.writerow({k: ("" if row[k] is None else row[k]) for k in FIELDS})
    write_text(path, buffer.getvalue())


def read_records(path: str | os.PathLike) -> list[Record]:
    """Reads a `.jsonl`/`.json` or `.csv` file of records, by its extension."""
    path = os.fspath(path)
    if path.endswith(".csv"):
        return read_csv(path)
    if path.endswith((".jsonl", ".json")):
        return read_jsonl(path)
    raise ValueError(
        f"Cannot tell the format of {path!r}: use a .jsonl or .csv file. "
        f"Received: path={path!r}"
    )

