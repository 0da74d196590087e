"""The extraction loop: inputs in, one teacher record per input out, exactly once.

`extract` prompts the teacher for every input of a records file and appends
each finished input to the output as one JSON line in the record schema
(`dss_keras.data.records`) with a `teacher` object:

```
{"id": ..., "input": ..., "label": <gold or null>, "rationale": ..., "llm_label": ...,
 "teacher": {"model", "backend", "task", "prompt_version", "sampling", "completions",
             "finish_reasons", "status", "error", "cause", "agreement", "usage", "attempts"}}
```

Exactly once, across crashes:

- Lines are written in input order, each with one `write` and a flush; the
  file is locked while a run writes to it.
- A rerun reads the output first: ids already there are skipped; a torn
  last line (no newline, or not JSON: a crash mid-write) is cut off and
  redone; a different model or prompt version is refused.
- An input whose request failed for good (after retries) is *not* written,
  only counted in the report, so a rerun tries it again. An input whose
  completion does not parse *is* written (status `parse_error`, null
  rationale and label): asking again would give the same answer.

Self-consistency (`samples > 1`): every sample is parsed, the labels vote
(equal equation values vote together), the kept rationale is the first one
whose label won, and `agreement` is the winner's share of all samples.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import time
from typing import Sequence

from dss_keras import metrics
from dss_keras.data.records import (
    Record,
    RecordError,
    iter_json_lines,
    read_records,
    record_from_dict,
)
from dss_keras.teacher.backends import Backend, Generation, cut_at_stop, make_backend
from dss_keras.teacher.prompts import PromptTemplate, custom_template, get_template
from dss_keras.teacher.report import FILTERS, ExtractionReport, summarize

logger = logging.getLogger(__name__)

def read_inputs(path: str | os.PathLike) -> list[Record]:
    """Reads the inputs to label: a records file whose `label` may be absent.

    JSON lines need only `input`; a missing `id` becomes `line-<number>`
    (stable only while the file does not change). CSV files follow
    `read_records`.

    Examples:

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "inputs.jsonl")
    >>> _ = open(path, "w").write('{"input": "Is ice cold?"}\\n{"id": "b", "input": "x", "label": "y"}\\n')
    >>> [(r.id, r.label) for r in read_inputs(path)]
    [('line-1', None), ('b', 'y')]
    """
    path = os.fspath(path)
    if not path.endswith((".jsonl", ".json")):
        return read_records(path)
    records, seen = [], {}
    for line, data in iter_json_lines(path):
        if isinstance(data, dict):
            data = {"id": f"line-{line}", **data}
            if data.get("label") is None:  # allowed here: the teacher will label it
                data.update(label=None, teacher=data.get("teacher") or {})
        record = record_from_dict(data, path, line)
        if record.id in seen:
            raise RecordError(path, line, "id",
                              f"duplicate id {record.id!r} (first on line {seen[record.id]})")
        seen[record.id] = line
        records.append(dataclasses.replace(record, teacher=None))
    return records


class TeacherLog:
    """The output file: resumable, append-only, one line per finished input.

    Opening it reads what is there, cuts off a torn last line, refuses a
    different model or prompt version, and locks the file.
    """

    def __init__(self, path: str, model: str, prompt_version: str):
        self.path = path
        self.done: set[str] = set()
        if os.path.exists(path):
            self._resume(model, prompt_version)
        self._file = open(path, "a", encoding="utf-8")
        try:
            import fcntl

            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # not on POSIX: no lock
            pass
        except OSError:
            self._file.close()
            raise RuntimeError(f"Another extraction is writing to {path}.") from None

    def _resume(self, model: str, prompt_version: str) -> None:
        with open(self.path, "rb") as f:
            data = f.read()
        lines = data.split(b"\n")
        good_end, number = 0, 0
        for number, raw in enumerate(lines[:-1], start=1):
            try:
                record = json.loads(raw) if raw.strip() else None
            except json.JSONDecodeError:
                if number == len(lines) - 1:  # the last line: torn by a crash
                    break
                raise RecordError(self.path, number, None, "invalid JSON in a teacher "
                                  "file; only a torn last line is repaired") from None
            good_end += len(raw) + 1
            if record is None:
                continue
            teacher = record.get("teacher") or {}
            for key, expected in (("model", model), ("prompt_version", prompt_version)):
                if teacher.get(key) != expected:
                    raise ValueError(
                        f"{self.path}:{number}: written with {key} {teacher.get(key)!r}, "
                        f"but this run uses {expected!r}. Write to another output file, "
                        "or use the same model and prompt to resume.")
            self.done.add(str(record.get("id")))
        if good_end < len(data):
            logger.warning("%s: cutting off a torn last line (%d bytes); it is redone.",
                           self.path, len(data) - good_end)
            with open(self.path, "r+b") as f:
                f.truncate(good_end)

    def append(self, record: dict) -> None:
        if record["id"] in self.done:
            raise RuntimeError(f"id {record['id']!r} is already in {self.path}")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()
        self.done.add(record["id"])

    def close(self) -> None:
        if not self._file.closed:
            os.fsync(self._file.fileno())
            self._file.close()


def vote_key(label: str, metric: str):
    """What makes two labels the same vote: their value for equations, else their text."""
    if metric in metrics.EQUATION_BENCHMARKS:
        value = metrics.evaluate_arithmetic(label)
        if value is not None:
            return round(value, 9)
    return metrics.normalize_text(label)


def majority_vote(labels: Sequence[str | None], metric: str = "exact_match"):
    """`(index of the kept sample, agreement)`; `(None, 0.0)` when no label parsed.

    Ties go to the label seen first; the kept sample is the first of the winners.

    Examples:

    >>> majority_vote(["yes", None, "no", "Yes"])
    (0, 0.5)
    >>> majority_vote(["(2 + 2)", "(4)", "(3 + 2)"], "svamp")
    (0, 0.6666666666666666)
    """
    keys = [None if label is None else vote_key(label, metric) for label in labels]
    counts = collections.Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0.0
    best = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == best)
    return keys.index(winner), best / len(labels)


def failure_cause(error: str, finish_reason: str | None = None) -> str:
    """A short, countable cause of a parse failure."""
    if finish_reason == "length":
        return "truncated (max tokens reached)"
    for needle, cause in (("is not one of", "label outside the label set"),
                          ("no answer marker", "no answer marker"),
                          ("times the answer marker", "several answer markers"),
                          ("does not match the format", "answer does not match the format"),
                          ("unbalanced", "answer cut inside parentheses"),
                          ("empty", error)):
        if needle in error:
            return cause
    return error


def teacher_record(record: Record, generation: Generation, template: PromptTemplate,
                   stop: Sequence[str], metadata: dict) -> dict:
    """The output line of one input whose request succeeded."""
    texts = [cut_at_stop(t, stop) for t in generation.texts]
    parsed = [template.parse(t) for t in texts]
    kept, agreement = majority_vote([p.label for p in parsed], template.metric)
    teacher = {**metadata, "completions": list(generation.texts),
               "finish_reasons": list(generation.finish_reasons),
               "status": "ok", "error": None, "cause": None, "agreement": agreement,
               "usage": generation.usage, "attempts": generation.attempts}
    if kept is None:
        first = parsed[0] if parsed else None
        reason = first.error if first else "no completion"
        finish = generation.finish_reasons[0] if generation.finish_reasons else None
        teacher.update(status="parse_error", error=reason, cause=failure_cause(reason, finish))
        rationale = label = None
    else:
        rationale, label = parsed[kept].rationale, parsed[kept].label
    return {"id": record.id, "input": record.input, "label": record.label,
            "rationale": rationale, "llm_label": label, "teacher": teacher}


class _Prompts(Sequence):
    """Prompts rendered when asked for, so that a large input file is not held twice."""

    def __init__(self, template: PromptTemplate, records: Sequence[Record], messages: bool):
        self.template, self.records, self.messages = template, records, messages

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.template.prompt(self.records[i].input)


def _resolve_template(task, demonstrations, answer_format, instruction, prompt_version):
    if isinstance(task, PromptTemplate):
        return task
    if task == "custom":
        if demonstrations is None or answer_format is None:
            raise ValueError("A custom task needs `demonstrations` and `answer_format`.")
        return custom_template(demonstrations, answer_format, instruction, prompt_version)
    template = get_template(task)
    if prompt_version is not None:
        template = dataclasses.replace(template, version=prompt_version)
    return template




def extract(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    task: str | PromptTemplate,
    backend: str | Backend,
    *,
    model: str | None = None,
    backend_options: dict | None = None,
    demonstrations: str | os.PathLike | None = None,
    answer_format: str | None = None,
    instruction: str = "",
    prompt_version: str | None = None,
    samples: int = 1,
    temperature: float | None = None,
    max_tokens: int = 256,
    filter: str = "all",
    limit: int | None = None,
    progress: bool = False,
) -> ExtractionReport:
    """Prompts a teacher for every input and appends one teacher record per input.

    Args:
        input_path: Records to label (`read_inputs`): `input`, and `id` and a
            gold `label` when known.
        output_path: The teacher JSONL; an existing one is resumed.
        task: `"cqa"`, `"svamp"`, `"esnli"`, `"anli1"`, `"custom"`, or a
            `PromptTemplate`.
        backend: `"openai"`, `"keras-hub"`, or a `Backend`.
        model: The model (name, preset or directory) for a backend given by name.
        backend_options: Keyword arguments of the backend's constructor.
        demonstrations, answer_format, instruction: Of a custom task, see
            `custom_template`.
        prompt_version: Overrides the template's version.
        samples: Completions per input; more than one votes (self-consistency).
        temperature: Sampling temperature; default 0 for one sample, else 0.7.
        max_tokens: Tokens per completion at most.
        filter: What the training file keeps: `"all"` (the output itself),
            `"parsed"` (records with a teacher label) or `"gold"` (records whose
            teacher label matches the gold label); the last two are written
            next to the output as `<output>.<filter>.jsonl`.
        limit: Label only the first `limit` inputs.
        progress: Show a progress bar (rate and ETA) on stderr.

    Returns:
        An `ExtractionReport`.

    Raises:
        TeacherError: when the endpoint refuses every request (HTTP 401,
            403, 404); what was written stays and a rerun resumes.

    Examples:

    >>> import os, tempfile
    >>> from dss_keras.teacher.backends import Backend, Generation
    >>> class Constant(Backend):
    ...     model = "constant"
    ...     def generate(self, prompts, n=1, temperature=0.0, max_tokens=256, stop=None):
    ...         return [Generation(("2 + 3 = 5. The answer is (2 + 3).",) * n) for _ in prompts]
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "in.jsonl"), "w").write(
    ...     '{"id": "1", "input": "Ann has 2 pens and gets 3.", "label": "( 2.0 + 3.0 )"}\\n')
    >>> report = extract(os.path.join(folder, "in.jsonl"), os.path.join(folder, "out.jsonl"),
    ...                  "svamp", Constant())
    >>> report.written, report.accuracy
    (1, 1.0)
    >>> extract(os.path.join(folder, "in.jsonl"), os.path.join(folder, "out.jsonl"),
    ...         "svamp", Constant()).skipped
    1
    """
    start = time.perf_counter()
    if filter not in FILTERS:
        raise ValueError(f"`filter` must be one of {FILTERS}. Received: filter={filter!r}")
    if samples < 1:
        raise ValueError(f"`samples` must be at least 1. Received: samples={samples}")
    template = _resolve_template(task, demonstrations, answer_format, instruction,
                                 prompt_version)
    input_path, output_path = os.fspath(input_path), os.fspath(output_path)
    records = read_inputs(input_path)[:limit]
    for number, record in enumerate(records, start=1):
        try:
            template.render_input(record.input)
        except ValueError as e:
            raise RecordError(input_path, number, "input", str(e)) from None
    if isinstance(backend, str):
        if not model:
            raise ValueError("Name the teacher model (`model`).")
        backend = make_backend(backend, model, **(backend_options or {}))
    if temperature is None:
        temperature = 0.0 if samples == 1 else 0.7
    metadata = {**backend.describe(), "task": template.name,
                "prompt_version": template.version,
                "sampling": {"samples": samples, "temperature": temperature,
                             "max_tokens": max_tokens}}
    report = ExtractionReport(output_path, num_inputs=len(records))
    log = TeacherLog(output_path, backend.model, template.version)
    try:
        todo = [r for r in records if r.id not in log.done]
        report.skipped = len(records) - len(todo)
        _run(todo, template, backend, log, metadata, report, samples, temperature,
             max_tokens, progress)
    finally:
        log.close()
        backend.close()
    summarize(report, template.metric, filter)
    report.wall_time = time.perf_counter() - start
    logger.info("%s", report)
    return report


def _run(todo, template, backend, log, metadata, report, samples, temperature, max_tokens,
         progress):
    """Asks the backend for `todo` and writes the finished ones in input order."""
    prompts = _Prompts(template, todo, backend.wants_messages)
    bar = None
    if progress and todo:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), unit="input", dynamic_ncols=True, smoothing=0.1)
    finished: dict[int, dict | None] = {}
    next_index = 0
    request_failures = collections.Counter()
    try:
        for index, generation in backend.iter_generate(
                prompts, samples, temperature, max_tokens, template.stop):
            report.requests += generation.attempts
            report.prompt_tokens += generation.usage.get("prompt_tokens", 0)
            report.completion_tokens += generation.usage.get("completion_tokens", 0)
            if generation.error is not None:
                request_failures[generation.error.split(" (after")[0]] += 1
                finished[index] = None
                logger.warning("id %s: request failed: %s", todo[index].id, generation.error)
            else:
                finished[index] = teacher_record(todo[index], generation, template,
                                                 template.stop, metadata)
            while next_index in finished:
                line = finished.pop(next_index)
                if line is not None:
                    log.append(line)
                    report.written += 1
                next_index += 1
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
        report.request_failures = dict(request_failures)
