"""The four benchmarks of the paper, read from the authors' data release.

The release (`datasets.zip` of the paper's repository) has this layout:

```
<data_dir>/<name>/<name>_<split>.json      one JSON object per line
<data_dir>/<name>/llm/<split>_CoT_<k>.json  a JSON list of raw teacher completions;
                                           batch k holds examples [k*B, (k+1)*B)
```

| name    | splits             | B     | input                                   | label             |
|---------|--------------------|-------|-----------------------------------------|-------------------|
| `cqa`   | train, test        | 1000  | question, `Answer Choices:`, (a)-(e)    | the answer text   |
| `svamp` | train, test        | 500   | `input`                                 | equation `label`  |
| `esnli` | train, valid, test | 5500  | premise, separator, hypothesis          | 0/1/2 as text     |
| `anli1` | train, valid, test | 5000  | premise, separator, hypothesis          | 0/1/2 as text     |

NLI labels 0/1/2 are `entailment`/`neutral`/`contradiction`. The CQA input is
the layout of the teacher's prompts: the question, a line `Answer Choices:`,
then `(a) choice` to `(e) choice`, one per line.

NLI separator: the reference joins premise and hypothesis with the tokenizer's
end-of-sequence token, `premise</s>hypothesis`, which the Hugging Face T5
tokenizer reads as the EOS id. KerasHub's SentencePiece tokenizer reads `</s>`
in text as plain characters, so the default here, `NLI_SEPARATOR = " </s> "`,
keeps the reference's marker but puts spaces around it so that the
hypothesis's first word keeps its usual tokens. Pass `nli_separator` to
choose another one.

Ids are the dataset's `id` (cqa) or `uid` (anli1), else `<name>-<split>-<index>`
with the 0-based position in the split's file.

`load_benchmark` adds the splits the experiments use: a `valid` split carved
from train (10%, seed 0) for cqa and svamp, and a deterministic training
fraction (see `dss_keras.data.splits`).

The module is a little over 400 lines because it holds one job end to end:
the release's four input layouts, its batched teacher files and the teacher
report read from them, with the errors that name the file and line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from typing import Callable, Mapping, Sequence

from dss_keras import metrics
from dss_keras.config import BENCHMARKS
from dss_keras.data import splits
from dss_keras.data.records import Record, RecordError, iter_json_lines
from dss_keras.data.teacher_outputs import (
    NLI_LABELS,
    get_answer_format,
    parse_teacher_outputs,
)

logger = logging.getLogger(__name__)

NLI_SEPARATOR = " </s> "
LAYOUT = (
    "<data_dir>/<name>/<name>_<split>.json (one JSON object per line) and "
    "<data_dir>/<name>/llm/<split>_CoT_<k>.json (JSON lists of teacher outputs)"
)


def _string(row: dict, field: str, path: str, line: int) -> str:
    if field not in row:
        raise RecordError(path, line, field, "missing")
    value = row[field]
    if not isinstance(value, str):
        kind = "null" if value is None else type(value).__name__
        raise RecordError(path, line, field, f"expected a string, received {kind}")
    return value


def _cqa_example(row: dict, path: str, line: int, separator: str) -> tuple[str, str]:
    question = _string(row, "question", path, line)
    choices = row.get("choices")
    if not (
        isinstance(choices, list)
        and len(choices) == 5
        and all(isinstance(c, str) for c in choices)
    ):
        raise RecordError(
            path, line, "choices", f"expected a list of 5 strings, received {choices!r:.80}"
        )
    lettered = "\n".join(f"({letter}) {c}" for letter, c in zip("abcde", choices))
    return f"{question}\nAnswer Choices:\n{lettered}", _string(row, "answer", path, line)


def _svamp_example(row: dict, path: str, line: int, separator: str) -> tuple[str, str]:
    label = _string(row, "label", path, line)
    if metrics.evaluate_arithmetic(label) is None:
        raise RecordError(path, line, "label", f"equation {label!r} has no value")
    return _string(row, "input", path, line), label


def _nli_example(row: dict, path: str, line: int, separator: str) -> tuple[str, str]:
    premise = _string(row, "premise", path, line).strip()
    hypothesis = _string(row, "hypothesis", path, line).strip()
    label = row.get("label")
    if isinstance(label, int) and not isinstance(label, bool) and 0 <= label < 3:
        label = NLI_LABELS[label]
    elif label not in NLI_LABELS:
        raise RecordError(
            path, line, "label", f"expected 0, 1 or 2 or one of {NLI_LABELS}, received {label!r}"
        )
    return f"{premise}{separator}{hypothesis}", label


@dataclasses.dataclass(frozen=True)
class OfficialBenchmark:
    """One benchmark of the release: its splits, teacher batch size and reader."""

    name: str
    splits: tuple[str, ...]
    teacher_batch_size: int
    example: Callable[[dict, str, int, str], tuple[str, str]]


SPECS: Mapping[str, OfficialBenchmark] = {
    "esnli": OfficialBenchmark("esnli", ("train", "valid", "test"), 5500, _nli_example),
    "anli1": OfficialBenchmark("anli1", ("train", "valid", "test"), 5000, _nli_example),
    "cqa": OfficialBenchmark("cqa", ("train", "test"), 1000, _cqa_example),
    "svamp": OfficialBenchmark("svamp", ("train", "test"), 500, _svamp_example),
}


def get_benchmark(name: str) -> OfficialBenchmark:
    if name not in BENCHMARKS:
        raise ValueError(
            f"Unknown benchmark; expected one of {', '.join(BENCHMARKS)}. "
            f"Received: name={name!r}"
        )
    return SPECS[name]


def _missing(path: str, what: str) -> FileNotFoundError:
    return FileNotFoundError(f"{path}: missing {what}. The release layout is {LAYOUT}.")


def _read_examples(benchmark: OfficialBenchmark, data_dir: str, split: str, separator: str):
    path = os.path.join(data_dir, benchmark.name, f"{benchmark.name}_{split}.json")
    if not os.path.isfile(path):
        raise _missing(path, f"file of the {benchmark.name} {split} split")
    examples, seen = [], {}
    for line, row in iter_json_lines(path):
        if not isinstance(row, dict):
            raise RecordError(path, line, None, "expected a JSON object")
        index = len(examples)
        id_field = next((k for k in ("id", "uid") if k in row), None)
        if id_field is None:
            id_ = f"{benchmark.name}-{split}-{index}"
        elif isinstance(row[id_field], int) and not isinstance(row[id_field], bool):
            id_ = str(row[id_field])
        else:
            id_ = _string(row, id_field, path, line)
        if id_ in seen:
            raise RecordError(
                path, line, id_field, f"duplicate id {id_!r} (first on line {seen[id_]})"
            )
        seen[id_] = line
        examples.append((id_, *benchmark.example(row, path, line, separator)))
    return examples


def _teacher_batches(benchmark: OfficialBenchmark, data_dir: str, split: str) -> dict:
    llm_dir = os.path.join(data_dir, benchmark.name, "llm")
    if not os.path.isdir(llm_dir):
        raise _missing(llm_dir, f"folder of teacher outputs of {benchmark.name}")
    pattern = re.compile(rf"{re.escape(split)}_CoT_(0|[1-9][0-9]*)\.json")
    return {
        int(match.group(1)): os.path.join(llm_dir, file)
        for file in os.listdir(llm_dir)
        if (match := pattern.fullmatch(file))
    }


def read_teacher_outputs(
    name: str, data_dir: str | os.PathLike, split: str, num_examples: int
) -> list:
    """Reads the raw teacher completions of a split, batch after batch.

    Checks that the batches `0..K-1` exist, that each holds exactly the
    benchmark's batch size `B` (the last one the rest), and that together
    they cover the `num_examples` examples of the split.

    Raises:
        FileNotFoundError: naming the first missing batch file.
        ValueError: naming the file with the wrong number of outputs, an extra
            batch beyond the split, or a file that is not a JSON list.
    """
    benchmark = get_benchmark(name)
    data_dir = os.fspath(data_dir)
    size = benchmark.teacher_batch_size
    batches = _teacher_batches(benchmark, data_dir, split)
    num_batches = math.ceil(num_examples / size)
    llm_dir = os.path.join(data_dir, name, "llm")
    for k in sorted(batches):
        if k >= num_batches:
            raise ValueError(
                f"{batches[k]}: batch {k} starts at example {k * size}, but the "
                f"{name} {split} split has only {num_examples} examples."
            )
    outputs = []
    for k in range(num_batches):
        if k not in batches:
            path = os.path.join(llm_dir, f"{split}_CoT_{k}.json")
            raise _missing(path, f"batch {k} of the teacher outputs ({name} {split})")
        path = batches[k]
        with open(path, encoding="utf-8") as f:
            try:
                batch = json.load(f)
            except json.JSONDecodeError as e:
                raise RecordError(path, e.lineno, None, f"invalid JSON: {e.msg}") from None
        expected = min(size, num_examples - k * size)
        if not isinstance(batch, list):
            raise ValueError(f"{path}: expected a JSON list of {expected} teacher outputs.")
        if len(batch) != expected:
            raise ValueError(
                f"{path}: holds {len(batch)} teacher outputs; batch {k} of {name} "
                f"{split} must hold {expected} (examples {k * size} to "
                f"{k * size + expected - 1} of {num_examples}, batch size {size})."
            )
        outputs.extend(batch)
    return outputs


@dataclasses.dataclass(frozen=True)
class TeacherReport:
    """How usable the teacher's outputs of a split are.

    Attributes:
        name: The benchmark.
        split: The split.
        num_records: Records in the split.
        num_unparsed: Records whose teacher output did not parse (no
            rationale, no teacher label).
        num_correct: Teacher labels that match the gold label.
        label_accuracy: `num_correct / num_records`; unparsed outputs count
            as wrong.
        num_without_value: svamp only: parsed teacher equations that have no
            value (e.g. `(some - 5)`); they count as wrong.
    """

    name: str
    split: str
    num_records: int
    num_unparsed: int
    num_correct: int
    label_accuracy: float
    num_without_value: int = 0

    def __str__(self) -> str:
        text = (
            f"{self.name} {self.split}: {self.num_records} records, "
            f"{self.num_unparsed} teacher outputs unparsed, teacher label accuracy "
            f"{self.label_accuracy:.4f} ({self.num_correct}/{self.num_records})"
        )
        if self.num_without_value:
            text += f", {self.num_without_value} teacher equations without a value"
        return text


def teacher_report(name: str, records: Sequence[Record], split: str = "") -> TeacherReport:
    """Counts unparsed teacher outputs and scores the teacher's labels.

    Scoring uses the benchmark's metric (`dss_keras.metrics.score_predictions`).

    Examples:

    >>> records = [Record("1", "x", "( 84.0 / 2.0 )", "84 / 2 = 42.", "(84 / 2)"),
    ...            Record("2", "y", "( 1.0 + 2.0 )", None, None)]
    >>> print(teacher_report("svamp", records, "train"))
    svamp train: 2 records, 1 teacher outputs unparsed, teacher label accuracy 0.5000 (1/2)
    """
    num_unparsed = sum(r.llm_label is None for r in records)
    score = metrics.score_predictions(
        name, [r.llm_label for r in records], [r.label for r in records]
    )
    return TeacherReport(
        name=name,
        split=split,
        num_records=len(records),
        num_unparsed=num_unparsed,
        num_correct=score.num_correct,
        label_accuracy=score.accuracy,
        num_without_value=score.num_unparsable - num_unparsed,
    )


@dataclasses.dataclass(frozen=True)
class OfficialSplit:
    """A split read by `read_official`.

    Attributes:
        records: The records, in the order of the split's file.
        report: The `TeacherReport`, or `None` when read without the teacher.
        parse_errors: Index of each record whose teacher output did not parse
            -> the reason.
    """

    records: list[Record]
    report: TeacherReport | None
    parse_errors: Mapping[int, str]


def read_official(
    name: str,
    data_dir: str | os.PathLike,
    split: str,
    *,
    with_teacher: bool = True,
    nli_separator: str = NLI_SEPARATOR,
) -> OfficialSplit:
    """Reads a split of the release with its teacher outputs and a report.

    Args:
        name: `"esnli"`, `"anli1"`, `"cqa"` or `"svamp"`.
        data_dir: The folder that holds `<name>/`.
        split: A split of the release: `train` or `test`, and `valid` for the
            NLI benchmarks.
        with_teacher: Read and parse the teacher outputs (`llm/`); when
            `False`, records have no rationale and no teacher label.
        nli_separator: Text between premise and hypothesis (NLI only).

    Raises:
        FileNotFoundError: a file of the layout is missing; the message names it.
        RecordError: a bad line of the split's file (path, line and field).
        ValueError: a teacher batch file with the wrong number of outputs.
    """
    benchmark = get_benchmark(name)
    if split not in benchmark.splits:
        hint = " (load_benchmark carves a valid split out of train)" if split == "valid" else ""
        raise ValueError(
            f"The {name} release has the splits {', '.join(benchmark.splits)}{hint}. "
            f"Received: split={split!r}"
        )
    data_dir = os.fspath(data_dir)
    examples = _read_examples(benchmark, data_dir, split, nli_separator)
    if not with_teacher:
        records = [Record(id_, text, label) for id_, text, label in examples]
        return OfficialSplit(records, None, {})
    outputs = read_teacher_outputs(name, data_dir, split, len(examples))
    parsed = parse_teacher_outputs(outputs, get_answer_format(name))
    records = [
        Record(id_, text, label, rationale, llm_label)
        for (id_, text, label), (rationale, llm_label) in zip(examples, parsed.pairs)
    ]
    return OfficialSplit(records, teacher_report(name, records, split), parsed.errors)


def load_official(
    name: str,
    data_dir: str | os.PathLike,
    split: str,
    *,
    with_teacher: bool = True,
    nli_separator: str = NLI_SEPARATOR,
) -> list[Record]:
    """Reads a split of the release as records; logs the teacher report.

    See `read_official` for the arguments and errors.

    Examples:

    >>> import json, os, tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "svamp", "llm"))
    >>> with open(os.path.join(root, "svamp", "svamp_test.json"), "w") as f:
    ...     _ = f.write(json.dumps({"input": "Lu has 8 pens in 2 boxes. How many "
    ...                             "in a box?", "label": "( 8.0 / 2.0 )"}) + "\\n")
    >>> with open(os.path.join(root, "svamp", "llm", "test_CoT_0.json"), "w") as f:
    ...     json.dump(["8 / 2 = 4. The answer is (8 / 2).\\n\\nQ: ..."], f)
    >>> load_official("svamp", root, "test")[0]
    Record(id='svamp-test-0', input='Lu has 8 pens in 2 boxes. How many in a box?', label='( 8.0 / 2.0 )', rationale='8 / 2 = 4.', llm_label='(8 / 2)')
    """
    result = read_official(
        name, data_dir, split, with_teacher=with_teacher, nli_separator=nli_separator
    )
    if result.report is not None:
        logger.info("%s", result.report)
    return result.records


def load_benchmark(
    name: str,
    data_dir: str | os.PathLike,
    split: str,
    *,
    train_fraction: float = 1.0,
    seed: int = 0,
    with_teacher: bool = True,
    nli_separator: str = NLI_SEPARATOR,
) -> list[Record]:
    """A split as the experiments use it: train, valid or test.

    For cqa and svamp, whose release has no validation split, `valid` is 10%
    of the release's train split (seed 0) and `train` the other 90%; esnli
    and anli1 use their own `valid`. `train_fraction` then keeps a
    deterministic, nested subset of `train` (see `splits.take_fraction`).

    Args:
        name: `"esnli"`, `"anli1"`, `"cqa"` or `"svamp"`.
        data_dir: The folder that holds `<name>/`.
        split: `"train"`, `"valid"` or `"test"`.
        train_fraction: Share of the training records to keep, in `(0, 1]`;
            only for `split="train"`.
        seed: Picks the training subset.
        with_teacher: Read the teacher outputs too.
        nli_separator: Text between premise and hypothesis (NLI only).
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"`split` must be train, valid or test. Received: split={split!r}")
    if split != "train" and train_fraction != 1.0:
        raise ValueError(
            "`train_fraction` applies to the train split only. "
            f"Received: split={split!r}, train_fraction={train_fraction}"
        )
    benchmark = get_benchmark(name)
    options = dict(with_teacher=with_teacher, nli_separator=nli_separator)
    carve = "valid" not in benchmark.splits and split != "test"
    records = load_official(name, data_dir, "train" if carve else split, **options)
    if carve:
        train, valid = splits.split_validation(records)
        records = train if split == "train" else valid
    if split == "train":
        records = splits.take_fraction(records, train_fraction, seed=seed)
    return records
