"""What an extraction run did, and which teacher records train.

`ExtractionReport` counts what was written, skipped and failed, the tokens
and the time; `summarize` adds what the whole output file says (parse
failures by cause, the teacher's accuracy on gold labels) and writes the
filtered training file (`FILTERS`).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os

from dss_keras import metrics
from dss_keras.data.records import Record, read_records, write_jsonl

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
        prompt_tokens, completion_tokens: Used by this run.
        requests: Requests made by this run, retries included.
        wall_time: Seconds.
        filtered_path: The filtered training file, when `filter` is not `"all"`.
        num_kept: Records in `filtered_path`.
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
    requests: int = 0
    wall_time: float = 0.0
    filtered_path: str | None = None
    num_kept: int | None = None

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
            f"  tokens: {self.prompt_tokens} prompt, {self.completion_tokens} completion",
            f"  {self.requests} requests in {self.wall_time:.1f} s "
            f"({self.requests_per_second:.2f} requests/s)",
        ]
        if self.filtered_path:
            lines.append(f"  filtered training file: {self.filtered_path} "
                         f"({self.num_kept} records)")
        return "\n".join(lines)


def labels_match(metric: str, prediction: str | None, reference: str | None) -> bool:
    """Whether a teacher label matches a gold label under the task's metric."""
    if prediction is None or reference is None:
        return False
    try:
        return metrics.score_predictions(metric, [prediction], [reference]).num_correct == 1
    except ValueError:  # a gold equation without a value
        return False


def keep_record(record: Record, keep: str, metric: str) -> bool:
    """Whether `filter=keep` keeps a teacher record for training."""
    if keep == "all":
        return True
    if keep == "parsed":
        return record.llm_label is not None
    return labels_match(metric, record.llm_label, record.label)


def filtered_path(output_path: str, keep: str) -> str:
    stem, ext = os.path.splitext(output_path)
    return f"{stem}.{keep}{ext or '.jsonl'}"


def summarize(report: ExtractionReport, metric: str, keep: str) -> None:
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
        kept = [r for r in records if keep_record(r, keep, metric)]
        report.filtered_path = filtered_path(report.output_path, keep)
        write_jsonl(kept, report.filtered_path)
        report.num_kept = len(kept)
