"""OpenAI's Batch API on the loopback server (`testing_server.FakeOpenAIServer`).

- `POST /v1/files` (multipart, purpose `batch`) stores a request file;
- `POST /v1/batches` creates a batch of an uploaded file;
- `GET /v1/batches/<id>` moves it on one step at each look: `validating`,
  `in_progress`, then `completed` (every request answered by the server's
  own `answer`, the failed ones in the error file) or, when `expire_batch`
  says so, `expired` with only its first requests done (the rest in the
  error file as `batch_expired`, as OpenAI does);
- `GET /v1/batches` lists the batches, newest first;
- `GET /v1/files/<id>/content` downloads a file.

Requests and replies follow OpenAI's batch file format, which `vllm
run-batch` reads and writes too:

```
{"custom_id": "x1", "method": "POST", "url": "/v1/chat/completions", "body": {...}}
{"id": "batch_req_1", "custom_id": "x1", "response": {"status_code": 200,
 "request_id": "req_1", "body": {...}}, "error": null}
```
"""

from __future__ import annotations

import email.parser
import email.policy
import json
import threading
from typing import Callable


class FakeBatchAPI:
    """The files and batches of one fake server.

    Attributes:
        files: `file id -> bytes`.
        batches: `batch id -> batch object`.
        requests_answered: Batch requests the server answered, in all.
    """

    def __init__(self, server, expire_batch: Callable[[int], int | None] | None = None):
        self.server = server
        self.expire_batch = expire_batch
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.requests_answered = 0
        self._lock = threading.Lock()

    def _file(self, data: bytes, purpose: str, filename: str) -> dict:
        file_id = f"file-{len(self.files) + 1}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": 0,
                "filename": filename, "purpose": purpose, "status": "processed"}

    def post(self, route: str, raw: bytes, content_type: str) -> tuple[int, bytes]:
        with self._lock:
            if route == "files":
                form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
                parts = {p.get_param("name", header="content-disposition"): p
                         for p in form.iter_parts()}
                upload = parts["file"]
                body = self._file(upload.get_payload(decode=True),
                                  parts["purpose"].get_content().strip(),
                                  upload.get_filename() or "upload.jsonl")
                return 200, json.dumps(body).encode()
            request = json.loads(raw)
            if request.get("input_file_id") not in self.files:
                return 404, json.dumps({"error": {"message": "No such file"}}).encode()
            batch_id = f"batch_{len(self.batches) + 1}"
            self.batches[batch_id] = {
                "id": batch_id, "object": "batch", "endpoint": request["endpoint"],
                "input_file_id": request["input_file_id"], "completion_window": "24h",
                "created_at": len(self.batches), "status": "validating",
                "metadata": request.get("metadata"), "output_file_id": None,
                "error_file_id": None,
                "request_counts": {"total": 0, "completed": 0, "failed": 0}}
            return 200, json.dumps(self.batches[batch_id]).encode()

    def get(self, path: str) -> tuple[int, bytes]:
        parts = path.split("?")[0].strip("/").split("/")[1:]  # after "v1"
        with self._lock:
            if parts == ["batches"]:
                data = sorted(self.batches.values(), key=lambda b: -b["created_at"])
                return 200, json.dumps({"object": "list", "data": data,
                                        "has_more": False}).encode()
            if len(parts) == 2 and parts[0] == "batches" and parts[1] in self.batches:
                return 200, json.dumps(self._advance(self.batches[parts[1]])).encode()
            if len(parts) == 3 and parts[0] == "files" and parts[1] in self.files:
                return 200, self.files[parts[1]]
        return 404, json.dumps({"error": {"message": f"Not found: {path}"}}).encode()

    def _advance(self, batch: dict) -> dict:
        if batch["status"] == "validating":
            batch["status"] = "in_progress"
        elif batch["status"] == "in_progress":
            self._run(batch)
        return batch

    def _run(self, batch: dict) -> None:
        lines = [json.loads(line) for line in self.files[batch["input_file_id"]].splitlines()
                 if line.strip()]
        number = int(batch["id"].split("_")[1])
        done = self.expire_batch(number) if self.expire_batch else None
        outputs, errors = [], []
        for i, line in enumerate(lines):
            if done is not None and i >= done:
                errors.append({"id": f"batch_req_{number}_{i}", "custom_id": line["custom_id"],
                               "response": None, "error": {
                                   "code": "batch_expired",
                                   "message": "This request could not be executed before "
                                              "the completion window expired."}})
                continue
            route = line["url"].rstrip("/").rsplit("/", 1)[-1]
            payload, reply = self.server.answer(route, line["body"])
            self.requests_answered += 1
            result = {"id": f"batch_req_{number}_{i}", "custom_id": line["custom_id"],
                      "response": {"status_code": reply.status, "request_id": f"req_{i}",
                                   "body": payload}, "error": None}
            (outputs if reply.status == 200 else errors).append(result)
        for key, results in (("output_file_id", outputs), ("error_file_id", errors)):
            if results:
                data = "".join(json.dumps(r) + "\n" for r in results).encode()
                batch[key] = self._file(data, "batch_output", f"{key}.jsonl")["id"]
        batch["status"] = "completed" if done is None else "expired"
        batch["request_counts"] = {"total": len(lines), "completed": len(outputs),
                                   "failed": len(errors)}
