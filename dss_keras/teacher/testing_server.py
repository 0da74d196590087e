"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It answers `POST /v1/chat/completions` and `POST /v1/completions`, and the
Batch API's files and batches (`testing_batch_api`). What it answers is
decided per request by two functions:

- `complete(prompt, index)`: the text of choice `index` (default: a fixed
  NLI-style answer);
- `script(prompt, attempt)`: a `Reply` that overrides the default, or `None`,
  where `attempt` counts the requests seen so far with the same prompt
  (0 for the first), so that "fail twice, then succeed" is easy to write.

`prompt` is the last user message (chat) or the prompt text (completions).
Every reply is delayed by `latency` seconds. The server counts requests and
the most requests it ever had in flight, and keeps the arrival times of each
prompt's requests and the time each reply was sent.

`endpoint` makes it behave like today's endpoints:

- `"plain"`: takes every parameter;
- `"reasoning"`: like OpenAI's reasoning models: HTTP 400
  `unsupported_parameter` for `max_tokens` ("Use 'max_completion_tokens'
  instead") and `stop`, `unsupported_value` for a temperature other than 1;
  each completion first spends `REASONING_TOKENS` tokens reasoning, counted
  in `usage.completion_tokens_details.reasoning_tokens`, and a budget that
  leaves no room for the answer ends with `finish_reason: length` and no text;
- `"single_sample"`: like Anthropic's OpenAI-compatible layer, `n` must be 1.

Token usage is the server's own count: words and punctuation marks
(`\\w+|[^\\w\\s]`) of every message, 4 more a message, and of each completion.

Examples:

>>> import json, urllib.request
>>> with FakeOpenAIServer(complete=lambda prompt, i: "Yes. So the answer is yes.") as server:
...     request = urllib.request.Request(
...         server.base_url + "/completions", method="POST",
...         data=json.dumps({"model": "m", "prompt": "Q: hi"}).encode())
...     reply = json.load(urllib.request.urlopen(request, timeout=5))
>>> reply["choices"][0]["text"], server.num_requests
('Yes. So the answer is yes.', 1)
"""

from __future__ import annotations

import collections
import dataclasses
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

ENDPOINTS = ("plain", "reasoning", "single_sample")
REASONING_TOKENS = 64
_TOKEN = re.compile(r"\w+|[^\w\s]")


@dataclasses.dataclass(frozen=True)
class Reply:
    """One scripted reply.

    Attributes:
        status: The HTTP status.
        texts: The choices' texts (`None`: ask `complete`); `()` gives a reply
            with empty choices.
        finish_reason: Of every choice.
        delay: Seconds to wait before replying (added to the latency).
        headers: Extra headers, e.g. `{"Retry-After": "1"}`.
        body: Raw bytes to send instead of a JSON reply (malformed replies).
        drip: Bytes per second to send the body at (a slow server), or 0.
        error: The error object of a non-200 reply (`{"message", "param", "code"}`).
    """

    status: int = 200
    texts: tuple[str, ...] | None = None
    finish_reason: str = "stop"
    delay: float = 0.0
    headers: dict = dataclasses.field(default_factory=dict)
    body: bytes | None = None
    drip: float = 0.0
    error: dict | None = None


def _default_complete(prompt: str, index: int) -> str:
    return "The hypothesis repeats the premise. So the answer is entailment."


def count_tokens(text: str) -> int:
    """The server's own token count of a text: words and punctuation marks."""
    return len(_TOKEN.findall(text))


def refusal(request: dict, endpoint: str) -> Reply | None:
    """The HTTP 400 an endpoint of this kind gives a request, or `None`."""
    def refuse(param, code, message):
        return Reply(400, error={"message": message, "type": "invalid_request_error",
                                 "param": param, "code": code})

    if endpoint == "reasoning":
        if "max_tokens" in request:
            return refuse("max_tokens", "unsupported_parameter",
                          "Unsupported parameter: 'max_tokens' is not supported with this "
                          "model. Use 'max_completion_tokens' instead.")
        if "stop" in request:
            return refuse("stop", "unsupported_parameter",
                          "Unsupported parameter: 'stop' is not supported with this model.")
        if request.get("temperature", 1) != 1:
            return refuse("temperature", "unsupported_value",
                          f"Unsupported value: 'temperature' does not support "
                          f"{request['temperature']} with this model. Only the default (1) "
                          "value is supported.")
    if endpoint == "single_sample" and int(request.get("n") or 1) != 1:
        return Reply(400, error={"type": "invalid_request_error",
                                 "message": "n: Must be exactly 1"})
    return None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY, Nagle's
    # algorithm and delayed ACKs add ~40 ms to every reply on loopback.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def _send(self, status: int, body: bytes, headers: dict = (), drip: float = 0.0,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in dict(headers).items():
            self.send_header(name, value)
        self.end_headers()
        if not drip:
            self.wfile.write(body)
            return
        for i in range(len(body)):
            self.wfile.write(body[i:i + 1])
            self.wfile.flush()
            time.sleep(1.0 / drip)

    def do_GET(self):
        server: FakeOpenAIServer = self.server.owner
        status, body = server.batches.get(self.path)
        self._send(status, body, content_type="application/octet-stream"
                   if self.path.endswith("/content") else "application/json")

    def do_POST(self):
        server: FakeOpenAIServer = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        route = self.path.rstrip("/").rsplit("/", 1)[-1]
        if route in ("files", "batches"):
            status, body = server.batches.post(route, raw, self.headers.get("Content-Type", ""))
            self._send(status, body)
            return
        request = json.loads(raw or b"{}")
        server.enter()
        try:
            payload, reply = server.answer(route, request)
            time.sleep(server.latency + reply.delay)
            body = reply.body if reply.body is not None else json.dumps(payload).encode()
            self._send(reply.status, body, reply.headers, reply.drip)
            server.sent(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout)
        finally:
            server.leave()


class FakeOpenAIServer:
    """A loopback OpenAI-compatible server; use it as a context manager.

    Args:
        complete: `(prompt, index) -> text` of a successful choice.
        script: `(prompt, attempt) -> Reply | None`, see the module docstring.
        latency: Seconds every reply waits.
        endpoint: `"plain"`, `"reasoning"` or `"single_sample"` (see above).
        expire_batch: `(batch number) -> requests done before it expires`, or
            `None` to complete it (`testing_batch_api.FakeBatchAPI`).

    Attributes:
        reply_times: `prompt -> monotonic times` each of its replies was sent.
        refusals: Requests refused for an unsupported parameter.
    """

    def __init__(
        self,
        complete: Callable[[str, int], str] = _default_complete,
        script: Callable[[str, int], Reply | None] | None = None,
        latency: float = 0.0,
        endpoint: str = "plain",
        expire_batch: Callable[[int], int | None] | None = None,
    ):
        from dss_keras.teacher.testing_batch_api import FakeBatchAPI

        if endpoint not in ENDPOINTS:
            raise ValueError(f"`endpoint` must be one of {ENDPOINTS}. Received: {endpoint!r}")
        self.complete = complete
        self.script = script
        self.latency = latency
        self.endpoint = endpoint
        self.num_requests = 0
        self.refusals = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: collections.Counter = collections.Counter()
        self.request_times: dict[str, list[float]] = collections.defaultdict(list)
        self.reply_times: dict[str, list[float]] = collections.defaultdict(list)
        self.batches = FakeBatchAPI(self, expire_batch)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False
        self._httpd.request_queue_size = 256
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "FakeOpenAIServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def enter(self) -> None:
        with self._lock:
            self.num_requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def sent(self, request: dict) -> None:
        with self._lock:
            self.reply_times[self.prompt_of(request)].append(time.monotonic())

    @staticmethod
    def prompt_of(request: dict) -> str:
        if "messages" in request:
            return [m for m in request["messages"] if m.get("role") == "user"][-1]["content"]
        return request.get("prompt", "")

    def answer(self, route: str, request: dict) -> tuple[dict, Reply]:
        """The JSON payload and the `Reply` of one request (also used by the batches)."""
        prompt = self.prompt_of(request)
        refused = refusal(request, self.endpoint)
        if refused is not None:
            with self._lock:
                self.refusals += 1
            return {"error": refused.error}, refused
        with self._lock:
            attempt = self.attempts[prompt]
            self.attempts[prompt] += 1
            self.request_times[prompt].append(time.monotonic())
        reply = (self.script(prompt, attempt) if self.script else None) or Reply()
        if reply.status != 200:
            error = reply.error or {"message": f"scripted HTTP {reply.status}", "type": "fake"}
            return {"error": error}, reply
        n = int(request.get("n") or 1)
        texts = reply.texts if reply.texts is not None else tuple(
            self.complete(prompt, i) for i in range(n))
        finish = [reply.finish_reason] * len(texts)
        reasoning = REASONING_TOKENS if self.endpoint == "reasoning" else 0
        budget = request.get("max_completion_tokens") or request.get("max_tokens")
        if reasoning and budget is not None:
            for i, text in enumerate(texts):
                if reasoning + count_tokens(text) > budget:
                    texts, finish[i] = texts[:i] + ("",) + texts[i + 1:], "length"
        return self._payload(request, texts, finish, reasoning, budget), reply

    def _payload(self, request, texts, finish, reasoning, budget) -> dict:
        if "messages" in request:
            choices = [{"index": i, "finish_reason": finish[i],
                        "message": {"role": "assistant", "content": t}}
                       for i, t in enumerate(texts)]
            kind = "chat.completion"
            prompt_tokens = sum(4 + count_tokens(m.get("content", ""))
                                for m in request["messages"]) + 3
        else:
            choices = [{"index": i, "finish_reason": finish[i], "text": t, "logprobs": None}
                       for i, t in enumerate(texts)]
            kind = "text_completion"
            prompt_tokens = count_tokens(request.get("prompt", ""))
        used = [count_tokens(t) + reasoning for t in texts]
        if reasoning and budget:  # thinking stops at the budget
            used = [min(u, budget) for u in used]
        completion_tokens = sum(used)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        if reasoning:
            usage["completion_tokens_details"] = {"reasoning_tokens": reasoning * len(texts)}
        return {"id": f"fake-{self.num_requests}", "object": kind, "created": 0,
                "model": request.get("model", ""), "choices": choices, "usage": usage}
