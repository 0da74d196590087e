"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks.

It answers `POST /v1/chat/completions` and `POST /v1/completions`. What it
answers is decided per request by two functions:

- `complete(prompt, index)`: the text of choice `index` (default: a fixed
  NLI-style answer);
- `script(prompt, attempt)`: a `Reply` that overrides the default, or `None`,
  where `attempt` counts the requests seen so far with the same prompt
  (0 for the first), so that "fail twice, then succeed" is easy to write.

`prompt` is the last user message (chat) or the prompt text (completions).
Every reply is delayed by `latency` seconds. The server counts requests and
the most requests it ever had in flight, and keeps the arrival times of each
prompt's requests.

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
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


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
    """

    status: int = 200
    texts: tuple[str, ...] | None = None
    finish_reason: str = "stop"
    delay: float = 0.0
    headers: dict = dataclasses.field(default_factory=dict)
    body: bytes | None = None


def _default_complete(prompt: str, index: int) -> str:
    return "The hypothesis repeats the premise. So the answer is entailment."


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes: without TCP_NODELAY, Nagle's
    # algorithm and delayed ACKs add ~40 ms to every reply on loopback.
    disable_nagle_algorithm = True

    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_POST(self):
        server: FakeOpenAIServer = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        route = self.path.rstrip("/").rsplit("/", 1)[-1]
        server.enter()
        try:
            payload, reply = server.answer(route, request)
            time.sleep(server.latency + reply.delay)
            body = reply.body if reply.body is not None else json.dumps(payload).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)
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
    """

    def __init__(
        self,
        complete: Callable[[str, int], str] = _default_complete,
        script: Callable[[str, int], Reply | None] | None = None,
        latency: float = 0.0,
    ):
        self.complete = complete
        self.script = script
        self.latency = latency
        self.num_requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: collections.Counter = collections.Counter()
        self.request_times: dict[str, list[float]] = collections.defaultdict(list)
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

    def answer(self, route: str, request: dict) -> tuple[dict, Reply]:
        if route == "completions" and "messages" in request:
            route = "chat"
        if "messages" in request:
            prompt = [m for m in request["messages"] if m.get("role") == "user"][-1]["content"]
        else:
            prompt = request.get("prompt", "")
        with self._lock:
            attempt = self.attempts[prompt]
            self.attempts[prompt] += 1
            self.request_times[prompt].append(time.monotonic())
        reply = (self.script(prompt, attempt) if self.script else None) or Reply()
        n = int(request.get("n") or 1)
        texts = reply.texts if reply.texts is not None else tuple(
            self.complete(prompt, i) for i in range(n))
        if "messages" in request:
            choices = [{"index": i, "finish_reason": reply.finish_reason,
                        "message": {"role": "assistant", "content": t}}
                       for i, t in enumerate(texts)]
            kind = "chat.completion"
        else:
            choices = [{"index": i, "finish_reason": reply.finish_reason, "text": t,
                        "logprobs": None} for i, t in enumerate(texts)]
            kind = "text_completion"
        prompt_tokens = len(prompt.split())
        completion_tokens = sum(len(t.split()) for t in texts)
        payload = {
            "id": f"fake-{self.num_requests}", "object": kind, "created": 0,
            "model": request.get("model", ""), "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        }
        if reply.status != 200:
            payload = {"error": {"message": f"scripted HTTP {reply.status}", "type": "fake"}}
        return payload, reply
