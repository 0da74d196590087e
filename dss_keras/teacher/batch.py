"""The batch route: what is left of a run, through OpenAI's Batch API or `vllm run-batch`.

Batch APIs answer within 24 hours at about half the price of single
requests. `BatchRoute.run` sends the inputs a run has left:

1. The first input goes as a single request, so that what the endpoint
   refuses is learnt (`backends.adaptation`) before thousands of requests
   are written with it.
2. The rest is written as request files in OpenAI's batch format, split at
   the API's limits (`BATCH_REQUESTS` requests, `BATCH_BYTES` bytes a file),
   uploaded, and a batch is created for each. Each batch's ids go to
   `<output stem>.batches.json` as soon as they exist, so that a rerun
   resumes polling the batches instead of paying for them twice (a file
   uploaded but not yet batched is found again by its id).
3. The batches are polled every `poll_interval` seconds; the results are
   downloaded and go through the same writer and parser as single requests
   (`extraction.Run.receive`). A batch that expires with part of its
   requests done keeps those; the rest are sent again in a new batch, for
   up to `max_rounds` rounds in all.

A spending limit is checked between batches (a batch, once created, is
paid for as a whole); `-v` logs each batch's progress while it is polled.

The same request file works offline with vLLM: `write_requests` writes it
and stops; `vllm run-batch -i requests.jsonl -o results.jsonl --model <m>`
answers it; `read_results` reads the results into the output.

```
{"custom_id": "<input id>", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
```
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import logging
import os
import time
from typing import Iterable, Sequence

from dss_keras.data.records import Record
from dss_keras.files import write_json
from dss_keras.teacher.backends import Generation, TeacherError
from dss_keras.teacher.backends.adaptation import Refusal, request_body

logger = logging.getLogger(__name__)

BATCH_REQUESTS = 50_000
"""Requests in one batch at most (OpenAI's limit)."""
BATCH_BYTES = 190 * 2**20
"""Bytes of one request file at most (OpenAI's limit is 200 MB)."""
TERMINAL = ("completed", "expired", "cancelled", "failed")
ROUTE_URLS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


def state_path(output_path: str) -> str:
    """Where an output's batches are noted: `<output stem>.batches.json`."""
    return os.path.splitext(output_path)[0] + ".batches.json"


@dataclasses.dataclass
class BatchRoute:
    """How to send a run's inputs in batches.

    Args:
        poll_interval: Seconds between looks at a batch.
        max_requests, max_bytes: Of one request file.
        max_rounds: Rounds of batches at most (a round resends what expired).
        write_requests: Only write the request file here (for `vllm run-batch`).
        read_results: Read the results from this file (`vllm run-batch -o`).

    Examples:

    >>> import json, os, tempfile
    >>> from dss_keras.teacher import extract
    >>> from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "in.jsonl"), "w").write(
    ...     '{"id": "a", "input": "A dog runs. </s> An animal moves."}\\n')
    >>> report = extract(os.path.join(folder, "in.jsonl"), os.path.join(folder, "out.jsonl"),
    ...                  "esnli", OpenAIBackend("meta-llama/Llama-3.1-8B-Instruct"),
    ...                  batch=BatchRoute(write_requests=os.path.join(folder, "requests.jsonl")))
    >>> line = json.loads(open(os.path.join(folder, "requests.jsonl")).readline())
    >>> line["custom_id"], line["url"], line["body"]["max_tokens"]
    ('a', '/v1/chat/completions', 256)
    """

    poll_interval: float = 30.0
    max_requests: int = BATCH_REQUESTS
    max_bytes: int = BATCH_BYTES
    max_rounds: int = 4
    write_requests: str | None = None
    read_results: str | None = None

    def run(self, run, todo: Sequence[Record]) -> None:
        """Sends `todo` for `run` (an `extraction.Run`) and writes what comes back."""
        if self.read_results:
            with open(self.read_results, encoding="utf-8") as f:
                read_results(run, todo, _json_lines(f, self.read_results))
            return
        if self.write_requests:
            with open(self.write_requests, "w", encoding="utf-8") as f:
                for record in todo:
                    f.write(json.dumps(request_line(run, record), ensure_ascii=False) + "\n")
            run.report.stopped = (f"{len(todo)} requests written to {self.write_requests}; "
                                  "answer them (`vllm run-batch -i ... -o results.jsonl`) and "
                                  "rerun with the results")
            return
        _Batches(self, run).send(todo)


def request_line(run, record: Record) -> dict:
    """One line of a batch request file: the request `run`'s backend would send for `record`."""
    backend, sampling = run.backend, run.sampling
    body = request_body(backend.model, backend.route, run.template.prompt(record.input),
                        backend.parameters, sampling.samples, sampling.temperature,
                        sampling.max_tokens, run.template.stop, backend.seed)
    return {"custom_id": record.id, "method": "POST", "url": ROUTE_URLS[backend.route],
            "body": body}


def _json_lines(lines: Iterable[str], path: str) -> Iterable[dict]:
    for number, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{number}: not a batch result line: {e.msg}") from None


def generation_of(result: dict, route: str, sent: dict) -> Generation | None:
    """The `Generation` of one batch result line; `None` for a request that was not run."""
    from openai.types import Completion
    from openai.types.chat import ChatCompletion

    from dss_keras.teacher.backends.openai_compatible import add_usage, read_choice

    response, error = result.get("response") or {}, result.get("error")
    status = response.get("status_code")
    if error and error.get("code") == "batch_expired" or not (error or response):
        return None
    if error or status != 200:
        refusal = Refusal.from_body(response.get("body"), (error or {}).get("message", ""))
        return Generation((), (), {}, f"HTTP {status}: {refusal.message[:200]}"
                          if status else refusal.message[:200],
                          request=sent, refused=status is not None and 400 <= status < 500)
    reply = (ChatCompletion if route == "chat" else Completion).model_validate(response["body"])
    usage = collections.Counter(prompt_tokens=0, completion_tokens=0)
    add_usage(usage, reply.usage)
    choices = [read_choice(c, route) for c in reply.choices]
    return Generation(tuple(t for t, _ in choices), tuple(c.finish_reason for c in reply.choices),
                      dict(usage), None if choices else "empty choices", 1,
                      tuple(r for _, r in choices), sent)


def read_results(run, todo: Sequence[Record], results: Iterable[dict],
                 answered: set | None = None) -> int:
    """Writes the results of `todo`'s requests through `run`; returns how many were written.

    The ids of the requests that were run (written, or failed) are added to
    `answered`; the others (expired) are left to send again.
    """
    by_id = {record.id: record for record in todo}
    sent = {k: v for k, v in request_line(run, todo[0])["body"].items()
            if k not in ("model", "messages", "prompt")} if todo else {}
    written = run.report.written
    for result in results:
        record = by_id.get(str(result.get("custom_id")))
        if record is None or record.id in run.output.entries:
            continue
        generation = generation_of(result, run.backend.route, sent)
        if generation is not None:
            run.receive(record, generation)
            if answered is not None:
                answered.add(record.id)
    return run.report.written - written


class _Batches:
    """Batches on OpenAI's Batch API, noted in the state file as they are made."""

    def __init__(self, route: BatchRoute, run):
        self.route, self.run = route, run
        self.path = state_path(run.output.path)
        self.state = {"batches": []}
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.state = json.load(f)
        self.client = run.backend.client(sync=True)
        self.answered: set[str] = set()  # run, written or failed: not sent again this run

    def _save(self) -> None:
        write_json(self.path, self.state)

    def send(self, todo: Sequence[Record]) -> None:
        by_id = {record.id: record for record in todo}
        for entry in self.state["batches"]:
            if not entry.get("collected"):
                self._collect(entry, list(by_id.values()))
        todo = self._left(todo)
        if todo:  # one request alone: what the endpoint refuses is learnt once
            self.run.send(todo[:1])
            todo = self._left(todo)
        if todo and self.run.sampling.samples > 1 and "n" in self.run.backend.parameters.omitted:
            raise TeacherError("This endpoint takes one sample per request (n = 1), which the "
                               "batch route does not split; use the direct route for samples.")
        for _ in range(self.route.max_rounds):
            if not todo or self.run.spending.exhausted:
                break
            entries = [self._submit(chunk) for chunk in self._chunks(todo)]
            for entry in entries:
                self._collect(entry, todo)
            left = self._left(todo)
            if len(left) == len(todo):
                break
            todo = left
        left = self._left(todo)
        self.run.close(len(left))
        if left and not self.run.spending.exhausted:
            logger.warning("%d inputs were not answered by the batches; a rerun sends them.",
                           len(left))

    def _left(self, todo: Sequence[Record]) -> list[Record]:
        return [r for r in todo if r.id not in self.run.output.entries
                and r.id not in self.answered]

    def _chunks(self, todo: Sequence[Record]) -> Iterable[bytes]:
        lines, size = [], 0
        for record in todo:
            line = (json.dumps(request_line(self.run, record), ensure_ascii=False)
                    + "\n").encode("utf-8")
            if lines and (len(lines) == self.route.max_requests
                          or size + len(line) > self.route.max_bytes):
                yield b"".join(lines)
                lines, size = [], 0
            lines.append(line)
            size += len(line)
        if lines:
            yield b"".join(lines)

    def _submit(self, data: bytes) -> dict:
        uploaded = self.client.files.create(file=("requests.jsonl", io.BytesIO(data)),
                                            purpose="batch")
        entry = {"input_file_id": uploaded.id, "requests": data.count(b"\n"),
                 "collected": False}
        self.state["batches"].append(entry)
        self._save()
        batch = self.client.batches.create(
            input_file_id=uploaded.id, endpoint=ROUTE_URLS[self.run.backend.route],
            completion_window="24h")
        entry["id"] = batch.id
        self._save()
        logger.info("Batch %s: %d requests submitted.", batch.id, entry["requests"])
        return entry

    def _find(self, entry: dict) -> str | None:
        """The batch made of an uploaded file whose batch id was not noted (a crash)."""
        for batch in self.client.batches.list(limit=100):
            if batch.input_file_id == entry["input_file_id"]:
                return batch.id
        return None

    def _collect(self, entry: dict, todo: Sequence[Record]) -> None:
        if "id" not in entry:
            entry["id"] = self._find(entry) or self.client.batches.create(
                input_file_id=entry["input_file_id"],
                endpoint=ROUTE_URLS[self.run.backend.route], completion_window="24h").id
            self._save()
        while (batch := self.client.batches.retrieve(entry["id"])).status not in TERMINAL:
            counts = batch.request_counts
            logger.info("Batch %s: %s (%s of %s done).", batch.id, batch.status,
                        counts.completed if counts else "?", counts.total if counts else "?")
            time.sleep(self.route.poll_interval)
        if batch.status == "failed":
            messages = "; ".join(e.message or "" for e in (batch.errors.data or [])
                                 ) if batch.errors else ""
            raise TeacherError(f"Batch {batch.id} failed: {messages or 'no reason given'}")
        for file_id in (batch.output_file_id, batch.error_file_id):
            if file_id:
                text = self.client.files.content(file_id).content.decode("utf-8")
                read_results(self.run, todo, _json_lines(io.StringIO(text), file_id),
                             self.answered)
        entry.update(collected=True, status=batch.status)
        self._save()
