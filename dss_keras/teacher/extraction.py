"""The extraction loop: inputs in, one teacher record per input out, exactly once.

`extract` prompts the teacher for every input of a records file and writes
each finished input to the output as one JSON line in the record schema
(`dss_keras.data.records`) with a `teacher` object (`answers.teacher_record`).

- **Nothing paid is lost.** Each record is written the moment its
  completion arrives, whatever order the completions finish in
  (`output_file.OutputFile`: locked before anything is read or repaired,
  torn last line cut and redone, each id once); at the end of the run the
  file is put back in input order, atomically.
- An input whose request failed for good (after retries) is *not* written,
  only counted in the report, so a rerun tries it again. An input whose
  completion does not parse *is* written (`parse_error`, null rationale and
  label); `retry_failed=True` asks again for those, and the record of each
  id is then its last attempt, once.
- **Early stop.** `REFUSALS_IN_A_ROW` requests in a row (in the order they
  finish) refused by the server with the same status and message (an HTTP
  4xx that no adaptation fixes: a wrong parameter, a model that does not
  take this prompt) stop the run with the server's message, so that one
  mistake is not paid for once per input (what is in flight, or received and
  not yet read, still comes back: at most twice `concurrency` requests).
  HTTP 401, 403 and 404 stop it at the first.
- **Spending limit.** With `max_spend_tokens` or `max_cost`, no new request
  starts once the limit is reached; what is in flight finishes and is
  written (an overshoot of at most twice `concurrency` requests: those in
  flight and those received but not yet counted), the report says
  so, and a rerun continues.
- The report is printed, returned, and added to `<output stem>.report.json`
  (`report.save_report`), whose totals add up the resumed runs.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from typing import Sequence

from dss_keras import interrupts
from dss_keras.data.records import (
    Record,
    RecordError,
    iter_json_lines,
    read_records,
    record_from_dict,
)
from dss_keras.teacher.answers import teacher_record
from dss_keras.teacher.backends import Backend, Generation, TeacherError, make_backend
from dss_keras.teacher.backends.adaptation import DEFAULT_BUDGET, TOKEN_PARAMETERS
from dss_keras.teacher.output_file import OutputFile
from dss_keras.teacher.prompts import PromptTemplate
from dss_keras.teacher.tasks import resolve_template
from dss_keras.teacher.report import (
    FILTERS,
    ExtractionReport,
    report_path,
    save_report,
    summarize,
)
from dss_keras.teacher.spending import Prices, SpendingLimit, TokenCounter

logger = logging.getLogger(__name__)

REFUSALS_IN_A_ROW = 5
"""Requests in a row refused with the same status and message that stop a run."""


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


def prepare_inputs(input_path: str, template: PromptTemplate,
                   limit: int | None = None) -> list[Record]:
    """The inputs to label, each checked to render in the template (file:line on error)."""
    records = read_inputs(input_path)[:limit]
    for number, record in enumerate(records, start=1):
        try:
            template.render_input(record.input)
        except ValueError as e:
            raise RecordError(input_path, number, "input", str(e)) from None
    return records


class Prompts(Sequence):
    """Prompts rendered when asked for, so that a large input file is not held twice."""

    def __init__(self, template: PromptTemplate, records: Sequence[Record]):
        self.template, self.records = template, records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return self.template.prompt(self.records[i].input)


class _Refusals:
    """Stops the run after `REFUSALS_IN_A_ROW` identical refusals in a row."""

    def __init__(self):
        self.error, self.count = None, 0

    def see(self, generation: Generation) -> None:
        if not generation.refused:
            self.error, self.count = None, 0
            return
        self.count = self.count + 1 if generation.error == self.error else 1
        self.error = generation.error
        if self.count >= REFUSALS_IN_A_ROW:
            raise TeacherError(
                f"The teacher endpoint refused {self.count} requests in a row: {self.error}. "
                "Stopped so that it is not paid for once per input: fix the model, prompt or "
                "parameters, then rerun (what was written stays).")


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How each input is sampled: `samples` completions at `temperature`, `max_tokens` each."""

    samples: int = 1
    temperature: float = 0.0
    max_tokens: int | None = None

    @classmethod
    def of(cls, samples: int, temperature: float | None,
           max_tokens: int | None) -> "Sampling":
        """With the default temperature: 0 for one sample, 0.7 for several (they must differ)."""
        if samples < 1:
            raise ValueError(f"`samples` must be at least 1. Received: samples={samples}")
        if temperature is None:
            temperature = 0.0 if samples == 1 else 0.7
        return cls(samples, temperature, max_tokens)

    def budget(self, generation: Generation) -> int:
        """The completion budget a generation was sent with."""
        sent = [generation.request[k] for k in TOKEN_PARAMETERS if k in generation.request]
        if sent:
            return max(sent)
        return DEFAULT_BUDGET if self.max_tokens is None else self.max_tokens


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
    instruction: str | None = None,
    prompt_version: str | None = None,
    samples: int = 1,
    temperature: float | None = None,
    max_tokens: int | None = None,
    filter: str = "all",
    min_agreement: float = 0.0,
    limit: int | None = None,
    retry_failed: bool = False,
    keep_reasoning: bool = False,
    prices: Prices | None = None,
    max_spend_tokens: int | None = None,
    max_cost: float | None = None,
    batch=None,
    progress: bool = False,
) -> ExtractionReport:
    """Prompts a teacher for every input and writes one teacher record per input.

    Args:
        input_path: Records to label (`read_inputs`): `input`, and `id` and a
            gold `label` when known.
        output_path: The teacher JSONL; an existing one is resumed.
        task: `"cqa"`, `"svamp"`, `"esnli"`, `"anli1"`, `"custom"`, or a
            `PromptTemplate`.
        backend: `"openai"`, `"keras-hub"`, or a `Backend`.
        model: The model (name, preset or directory) for a backend given by name.
        backend_options: Keyword arguments of the backend's constructor.
        demonstrations, instruction: Of a custom task, or instead of a
            built-in task's own (a new prompt version); see `resolve_template`.
        answer_format: Of a custom task, see `custom_template`.
        prompt_version: Overrides the template's version.
        samples: Completions per input; more than one votes (self-consistency).
        temperature: Sampling temperature; default 0 for one sample, else 0.7.
        max_tokens: Completion tokens per request at most; `None`: 256, or
            4096 for a reasoning model (its thinking counts against it).
        filter: What the training file keeps: `"all"` (the output itself),
            `"parsed"` (records with a teacher label) or `"gold"` (records whose
            teacher label matches the gold label); the last two are written
            next to the output as `<output>.<filter>.jsonl`.
        min_agreement: With `filter` `"parsed"` or `"gold"`, also leave out
            records whose winning label has less than this share of the samples.
        limit: Label only the first `limit` inputs.
        retry_failed: Ask again for the inputs whose records did not parse.
        keep_reasoning: Keep a reasoning model's reasoning in `teacher.reasoning`.
        prices: Dollars per million input and output tokens, for the cost.
        max_spend_tokens, max_cost: Stop starting requests once this run has
            spent this many tokens, or dollars (needs `prices`).
        batch: A `batch.BatchRoute`: send what is left through a batch API
            instead of one request at a time.
        progress: Show a progress bar (rate and ETA) on stderr.

    Returns:
        An `ExtractionReport` (also added to `<output stem>.report.json`).

    Raises:
        TeacherError: when the endpoint refuses every request (HTTP 401,
            403, 404, or the same refusal `REFUSALS_IN_A_ROW` times in a row);
            what was written stays and a rerun resumes.

    Examples:

    >>> import os, tempfile
    >>> from dss_keras.teacher.backends import Backend, Generation
    >>> class Constant(Backend):
    ...     model = "constant"
    ...     def generate(self, prompts, n=1, temperature=0.0, max_tokens=None, stop=None):
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
    sampling = Sampling.of(samples, temperature, max_tokens)
    if not 0.0 <= min_agreement <= 1.0 or (min_agreement and filter == "all"):
        raise ValueError("`min_agreement` is a share between 0 and 1 that filters the training "
                         "file: give `filter` 'parsed' or 'gold' with it. Received: "
                         f"min_agreement={min_agreement}, filter={filter!r}")
    template = resolve_template(task, demonstrations, answer_format, instruction,
                                prompt_version)
    input_path, output_path = os.fspath(input_path), os.fspath(output_path)
    records = prepare_inputs(input_path, template, limit)
    spending = SpendingLimit(max_spend_tokens, max_cost, prices)
    if isinstance(backend, str):
        if not model:
            raise ValueError("Name the teacher model (`model`).")
        backend = make_backend(backend, model, **(backend_options or {}))
    metadata = {**backend.describe(), "task": template.name,
                "prompt_version": template.version,
                "sampling": dataclasses.asdict(sampling)}
    report = ExtractionReport(output_path, num_inputs=len(records))
    try:
        with OutputFile(output_path, backend.model, template.versions) as output:
            try:
                if retry_failed:
                    asked = {r.id for r in records}
                    again = [k for k, e in output.entries.items() if e.status != "ok"
                             and k in asked]
                    output.drop(again)
                    report.retried = len(again)
                todo = [r for r in records if r.id not in output.entries]
                report.skipped = len(records) - len(todo)
                run = Run(template, backend, output, metadata, report, sampling, spending,
                          keep_reasoning)
                if batch is not None:
                    batch.run(run, todo)
                else:
                    run.send(todo, progress)
                output.finish([r.id for r in records])
                summarize(report, template.metric, filter, min_agreement)
            finally:
                report.cost = spending.cost
                report.wall_time = time.perf_counter() - start
                _save(report)
    finally:
        backend.close()
    logger.info("%s", report)
    return report


def _save(report: ExtractionReport) -> None:
    try:
        save_report(report)
    except OSError as e:
        logger.warning("%s: the report was not saved: %s", report_path(report.output_path),
                       e.strerror or e)


class Run:
    """One run's state: writes each generation as it arrives, and keeps the accounts."""

    def __init__(self, template, backend, output, metadata, report, sampling, spending,
                 keep_reasoning):
        self.template, self.backend, self.output = template, backend, output
        self.metadata, self.report, self.sampling = metadata, report, sampling
        self.spending, self.keep_reasoning = spending, keep_reasoning
        self.refusals = _Refusals()
        self.counter = TokenCounter()
        self.received = 0

    def send(self, todo: Sequence[Record], progress: bool = False) -> None:
        """Asks the backend for `todo`, one request (or batch) at a time."""
        bar = None
        if progress and todo:
            from tqdm import tqdm

            bar = tqdm(total=len(todo), unit="input", dynamic_ncols=True, smoothing=0.1)
        prompts = Prompts(self.template, todo)
        self.received = 0
        try:
            for index, generation in self.backend.iter_generate(
                    prompts, self.sampling.samples, self.sampling.temperature,
                    self.sampling.max_tokens, self.template.stop,
                    admit=lambda: not self.spending.exhausted):
                self.receive(todo[index], generation, prompts, index)
                interrupts.raise_if_interrupted()
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            self.close(len(todo) - self.received)

    def receive(self, record: Record, generation: Generation, prompts=None, index=None) -> None:
        """Accounts for one input's generation and writes its record (or counts its failure)."""
        report = self.report
        self.received += 1
        report.requests += generation.attempts
        for key in ("prompt_tokens", "completion_tokens", "reasoning_tokens",
                    "unanswered_requests"):
            setattr(report, key, getattr(report, key) + generation.usage.get(key, 0))
        unanswered = generation.usage.get("unanswered_requests", 0)
        prompt_estimate = (self.counter.count_prompt(prompts[index], self.backend.wants_messages)
                           if unanswered and prompts is not None else 0)
        self.spending.charge(generation.usage, prompt_estimate, self.sampling.budget(generation))
        self.refusals.see(generation)
        if generation.error is not None:
            cause = generation.error.split(" (after")[0]
            report.request_failures[cause] = report.request_failures.get(cause, 0) + 1
            logger.warning("id %s: request failed: %s", record.id, generation.error)
            return
        self.output.append(teacher_record(record, generation, self.template, self.metadata,
                                          self.sampling.budget(generation),
                                          self.keep_reasoning))
        report.written += 1

    def close(self, left: int) -> None:
        """Notes why the run stopped with `left` inputs unanswered, and what was adapted."""
        if left:
            self.report.stopped = self.spending.reason
        self.report.adaptations = list(self.backend.adaptations)
        if self.backend.parameters is not None:
            self.report.parameters = self.backend.parameters.describe()
