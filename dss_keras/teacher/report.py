"""What an extraction run did, and which teacher records train.

`ExtractionReport` counts what was written, skipped and failed, the tokens,
the cost and the time; `summarize` adds what the whole output file says
(parse failures by cause, the teacher's accuracy on gold labels) and writes
the filtered training file (`FILTERS`, and `min_agreement` for
self-consistent samples). `save_report` keeps every run's report beside the
output, `<output stem>.report.json`, with the totals over resumed runs.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os

from dss_keras import metrics
from dss_keras.data.records import Record, read_records, write_jsonl
from dss_keras.files import write_json

logger = logging.getLogger(__name__)

FILTERS = ("all", "parsed", "gold")


@dataclasses.dataclass
class ExtractionReport:
    """What one `extract` run did.

    Attributes:
        output_path: The teacher records.
        num_inputs: Inputs in the input file.
        written: Records written by this run.
        skipped: Inputs already in the output (resumed).
        request_failures: Inputs not written because their request failed,
            by cause; a rerun retries them.
        parse_failures: Records of the output (this run's and earlier ones)
            without a rationale, by cause.
        accuracy: Teacher labels against gold labels, over the whole output
            (`None` when no record has a gold label).
        num_gold: Records of the output with a gold label.
        prompt_tokens, completion_tokens: Used by this run, as the endpoint
            counts them; `reasoning_tokens` is the part of the completion
            tokens spent reasoning.
        unanswered_requests: Requests sent that got no reply (deadline,
            dropped connection): an endpoint may bill them all the same.
        cost: Estimated from the prices given, else `None`.
        requests: Requests made by this run, retries included.
        wall_time: Seconds.
        stopped: Why the run stopped before trying every input (a spending
            limit), else `None`; a rerun continues.
        retried: Records dropped to be asked again (`retry_failed`).
        parameters: The request parameters sent at the end of the run.
        adaptations: What was changed to suit the endpoint, and its message.
        filtered_path: The filtered training file, when `filter` is not `"all"`.
        num_kept: Records in `filtered_path`.
        below_agreement: Parsed records left out of `filtered_path` by
            `min_agreement`.
    """

    output_path: str
    num_inputs: int = 0
    written: int = 0
    skipped: int = 0
    request_failures: dict = dataclasses.field(default_factory=dict)
    parse_failures: dict = dataclasses.field(default_factory=dict)
    accuracy: float | None = None
    num_gold: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    unanswered_requests: int = 0
    cost: float | None = None
    requests: int = 0
    wall_time: float = 0.0
    stopped: str | None = None
    retried: int = 0
    parameters: dict = dataclasses.field(default_factory=dict)
    adaptations: list = dataclasses.field(default_factory=list)
    filtered_path: str | None = None
    num_kept: int | None = None
    below_agreement: int = 0

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.wall_time if self.wall_time else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "requests_per_second": self.requests_per_second}

    def __str__(self) -> str:
        def causes(counts):
            return "; ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "none"

        lines = [
            f"Teacher records: {self.output_path}",
            f"  written {self.written}, skipped (already there) {self.skipped}, "
            f"of {self.num_inputs} inputs",
            f"  parse failures (written, no rationale): {causes(self.parse_failures)}",
            f"  request failures (not written, a rerun retries them): "
            f"{causes(self.request_failures)}",
            "  teacher accuracy: " + (
                f"{self.accuracy:.4f} on {self.num_gold} records with a gold label"
                if self.accuracy is not None else "no gold labels"),
            f"  tokens: {self.prompt_tokens} prompt, {self.completion_tokens} completion"
            + (f" ({self.reasoning_tokens} reasoning)" if self.reasoning_tokens else "")
            + (f"; estimated cost ${self.cost:.4f}" if self.cost is not None else ""),
            f"  {self.requests} requests in {self.wall_time:.1f} s "
            f"({self.requests_per_second:.2f} requests/s)"
            + (f", {self.unanswered_requests} unanswered (may be billed)"
               if self.unanswered_requests else ""),
        ]
        if self.retried:
            lines.append(f"  asked again (--retry-failed): {self.retried}")
        for change in self.adaptations:
            lines.append(f"  adapted to the endpoint: {change['change']}")
        if self.filtered_path:
            lines.append(f"  filtered training file: {self.filtered_path} "
                         f"({self.num_kept} records"
                         + (f"; {self.below_agreement} below the minimum agreement"
                            if self.below_agreement else "") + ")")
        if self.stopped:
            lines.append(f"  stopped early: {self.stopped}; rerun the command to continue")
        return "\n".join(lines)


def labels_match(metric: str, prediction: str | None, reference: str | None) -> bool:
    """Whether a teacher label matches a gold label under the task's metric."""
    if prediction is None or reference is None:
        return False
    try:
        return metrics.score_predictions(metric, [prediction], [reference]).num_correct == 1
    except ValueError:  # a gold equation without a value
        return False


def keep_record(record: Record, keep: str, metric: str, min_agreement: float = 0.0) -> bool:
    """Whether `filter=keep` keeps a teacher record for training.

    `min_agreement` also leaves out records whose samples agree less (the
    winning label's share of the samples, `teacher.agreement`).
    """
    if keep == "all":
        return True
    if min_agreement and (record.teacher or {}).get("agreement", 1.0) < min_agreement:
        return False
    if keep == "parsed":
        return record.llm_label is not None
    return labels_match(metric, record.llm_label, record.label)


def filtered_path(output_path: str, keep: str) -> str:
    stem, ext = os.path.splitext(output_path)
    return f"{stem}.{keep}{ext or '.jsonl'}"


def summarize(report: ExtractionReport, metric: str, keep: str,
              min_agreement: float = 0.0) -> None:
    """Fills in what the output file says and writes the filtered training file."""
    records = read_records(report.output_path) if os.path.exists(report.output_path) else []
    causes = [(r.teacher or {}).get("cause") for r in records if r.llm_label is None]
    report.parse_failures = dict(collections.Counter(c or "unknown" for c in causes))
    gold = [r for r in records if r.label is not None]
    report.num_gold = len(gold)
    if gold:
        try:
            score = metrics.score_predictions(metric, [r.llm_label for r in gold],
                                              [r.label for r in gold])
            report.accuracy = score.accuracy
        except ValueError as e:
            logger.warning("Teacher accuracy not computed: %s", e)
    if keep != "all":
        kept = [r for r in records if keep_record(r, keep, metric, min_agreement)]
        report.filtered_path = filtered_path(report.output_path, keep)
        write_jsonl(kept, report.filtered_path)
        report.num_kept = len(kept)
        if min_agreement:
            report.below_agreement = sum(
                r.llm_label is not None and keep_record(r, keep, metric)
                and not keep_record(r, keep, metric, min_agreement) for r in records)


def report_path(output_path: str) -> str:
    """Where the reports of an output's runs are kept: `<output stem>.report.json`."""
    return os.path.splitext(output_path)[0] + ".report.json"


# Counts that add up over the runs of one output.
SUMMED = ("written", "requests", "prompt_tokens", "completion_tokens", "reasoning_tokens",
          "unanswered_requests", "cost", "wall_time", "retried")


def save_report(report: ExtractionReport) -> str:
    """Adds this run's report to `report_path(...)`, with totals over all runs; returns the path.

    Examples:

    >>> import os, tempfile
    >>> output = os.path.join(tempfile.mkdtemp(), "teacher.jsonl")
    >>> _ = save_report(ExtractionReport(output, written=2, prompt_tokens=10))
    >>> path = save_report(ExtractionReport(output, written=3, prompt_tokens=5))
    >>> saved = json.load(open(path))
    >>> len(saved["runs"]), saved["totals"]["written"], saved["totals"]["prompt_tokens"]
    (2, 5, 15)
    """
    path = report_path(report.output_path)
    runs = []
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                runs = list(json.load(f)["runs"])
        except (ValueError, KeyError, TypeError) as e:
            logger.warning("%s: not a report file (%s); starting it again.", path, e)
    runs.append(report.to_dict())
    totals = {key: sum(run.get(key) or 0 for run in runs) for key in SUMMED}
    write_json(path, {"output": report.output_path, "totals": totals, "runs": runs})
    return path
