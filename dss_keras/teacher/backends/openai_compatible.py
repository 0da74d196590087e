"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, TGI).

Requests go through the official `openai` client's asynchronous API, at most
`concurrency` at a time. A request that times out, cannot connect, or gets
HTTP 408, 409, 429 or 5xx, or a reply that is not valid JSON, is retried up to
`max_retries` times, after a delay that grows exponentially with full jitter
and is never shorter than the server's `Retry-After`. HTTP 401, 403 and 404
stop the run (a wrong key, model or URL would fail every request); other
errors fail that prompt only. The `openai` client's own retries are off, so
that every attempt is counted.

The API key is read from an environment variable (`OPENAI_API_KEY` by
default) when the client is built and is never stored, printed or written.
A local server (`base_url` given) without a key gets a placeholder key.
"""

from __future__ import annotations

import asyncio
import os
import queue
import random
import threading
from typing import Iterator, Sequence

from dss_keras.teacher.backends import Backend, Generation

ROUTES = ("chat", "completions")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403, 404})
# The longest Retry-After that is waited for; a longer one counts as a failure.
MAX_RETRY_AFTER = 120.0


class TeacherError(RuntimeError):
    """A failure that every request would share (authentication, model, URL)."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _retry_after(headers) -> float | None:
    if headers is None:
        return None
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return max(0.0, float(value) * scale)
            except ValueError:
                return None
    return None


class OpenAIBackend(Backend):
    """A teacher behind an OpenAI-compatible HTTP endpoint.

    Args:
        model: The model name the server knows, e.g. `"gpt-4o-mini"`,
            `"meta-llama/Llama-3.1-8B-Instruct"` or `"llama3.1"`.
        base_url: The endpoint, e.g. `http://localhost:8000/v1` (vLLM) or
            `http://localhost:11434/v1` (Ollama); `None` for OpenAI.
        api_key_env: The environment variable that holds the API key.
        route: `"chat"` (`/chat/completions`, demonstrations as turns) or
            `"completions"` (`/completions`, one text prompt).
        concurrency: Requests in flight at most.
        timeout: Seconds per request.
        max_retries: Retries of one request after its first attempt.
        backoff: Seconds of the first retry delay's upper bound; it doubles
            with each retry, up to `max_backoff`.
        max_backoff: The largest delay bound, in seconds.
        seed: Sent to servers that support seeded sampling.

    Examples:

    >>> backend = OpenAIBackend("my-model", base_url="http://127.0.0.1:9/v1",
    ...                         concurrency=4)
    >>> backend.describe()["route"], backend.wants_messages
    ('chat', True)
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        route: str = "chat",
        concurrency: int = 8,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        seed: int | None = None,
    ):
        if route not in ROUTES:
            raise ValueError(f"`route` must be one of {ROUTES}. Received: route={route!r}")
        if concurrency < 1:
            raise ValueError(f"`concurrency` must be at least 1. Received: concurrency={concurrency}")
        if base_url is None and not os.environ.get(api_key_env):
            raise ValueError(f"Set the API key in the environment variable {api_key_env}, "
                             "or give the base URL of a local server.")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.route = route
        self.concurrency = concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.seed = seed
        self.wants_messages = route == "chat"
        self.batch_size = concurrency

    def describe(self) -> dict:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url,
                "route": self.route}

    def _client(self):
        import openai

        return openai.AsyncOpenAI(
            api_key=os.environ.get(self.api_key_env) or "none",
            base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def iter_generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
    ) -> Iterator[tuple[int, Generation]]:
        """`(index, Generation)` as each request finishes; at most `concurrency` in flight."""
        if not len(prompts):
            return
        results: queue.Queue = queue.Queue()
        state = {}

        async def run():
            state["task"] = asyncio.current_task()
            state["loop"] = asyncio.get_running_loop()
            client = self._client()
            indices = iter(range(len(prompts)))

            async def worker():
                for i in indices:
                    generation = await self._generate_one(
                        client, prompts[i], n, temperature, max_tokens, stop)
                    results.put((i, generation))

            try:
                await asyncio.gather(*(worker() for _ in range(min(self.concurrency,
                                                                      len(prompts)))))
            finally:
                await client.close()

        def main():
            try:
                asyncio.run(run())
            except BaseException as e:  # handed to the consuming thread
                results.put(e)

        thread = threading.Thread(target=main, name="openai-backend", daemon=True)
        thread.start()
        received = 0
        try:
            while received < len(prompts):
                item = results.get()
                if isinstance(item, BaseException):
                    raise item
                received += 1
                yield item
        finally:
            if thread.is_alive() and "loop" in state:
                state["loop"].call_soon_threadsafe(state["task"].cancel)
            thread.join(timeout=self.timeout + 5)

    async def _generate_one(self, client, prompt, n, temperature, max_tokens, stop):
        texts, reasons, attempts = [], [], 0
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        while len(texts) < n:
            want = n - len(texts)
            response, tries, error = await self._request_with_retries(
                client, prompt, want, temperature, max_tokens, stop)
            attempts += tries
            if error is None and not response.choices:
                error = "empty choices"
            if error is not None:
                return Generation((), (), usage, error, attempts)
            for choice in response.choices[:want]:
                if self.route == "chat":
                    text = choice.message.content if choice.message else None
                else:
                    text = choice.text
                texts.append(text or "")
                reasons.append(choice.finish_reason)
            if response.usage is not None:
                usage["prompt_tokens"] += response.usage.prompt_tokens or 0
                usage["completion_tokens"] += response.usage.completion_tokens or 0
        return Generation(tuple(texts), tuple(reasons), usage, None, attempts)

    async def _request_with_retries(self, client, prompt, n, temperature, max_tokens, stop):
        """`(response, attempts, error)`; `error` is `None` on success."""
        reason = None
        for attempt in range(self.max_retries + 1):
            try:
                return await self._request(client, prompt, n, temperature, max_tokens,
                                           stop), attempt + 1, None
            except _Retryable as e:
                reason = e.reason
                if attempt == self.max_retries:
                    break
                if e.retry_after is not None and e.retry_after > MAX_RETRY_AFTER:
                    return None, attempt + 1, f"{reason} (Retry-After {e.retry_after:.0f} s)"
                bound = min(self.max_backoff, self.backoff * 2 ** attempt)
                delay = random.uniform(0.0, bound)
                if e.retry_after is not None:
                    delay = max(delay, e.retry_after)
                await asyncio.sleep(delay)
            except _Failed as e:
                return None, attempt + 1, str(e)
        return None, self.max_retries + 1, f"{reason} (after {self.max_retries + 1} attempts)"

    async def _request(self, client, prompt, n, temperature, max_tokens, stop):
        import json

        import openai

        from openai.types import Completion
        from openai.types.chat import ChatCompletion

        body = dict(model=self.model, n=n, temperature=temperature, max_tokens=max_tokens)
        if stop:
            body["stop"] = list(stop)[:4]
        if self.seed is not None:
            body["seed"] = self.seed
        if self.route == "chat":
            body["messages"] = (list(prompt.messages) if hasattr(prompt, "messages")
                                else [{"role": "user", "content": str(prompt)}])
        else:
            body["prompt"] = prompt.text if hasattr(prompt, "text") else str(prompt)
        try:
            # The client's generic `post` sends the plain JSON body: the typed
            # `create` methods re-validate every message of the few-shot prompt,
            # which costs ~6 ms of CPU per request.
            if self.route == "chat":
                return await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
            return await client.post("/completions", cast_to=Completion, body=body)
        except openai.APITimeoutError:
            raise _Retryable("timeout") from None
        except openai.APIConnectionError as e:
            raise _Retryable(f"connection error: {type(e.__cause__).__name__}") from None
        except openai.APIStatusError as e:
            status = e.status_code
            if status in FATAL_STATUSES:
                raise TeacherError(f"HTTP {status} from the teacher endpoint "
                                   f"({self.base_url or 'OpenAI'}, model {self.model!r}): "
                                   f"{e.message[:200]}") from None
            if status in RETRY_STATUSES:
                raise _Retryable(f"HTTP {status}", _retry_after(e.response.headers)) from None
            raise _Failed(f"HTTP {status}: {e.message[:200]}") from None
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as e:
            raise _Retryable(f"invalid response: {type(e).__name__}") from None


class _Failed(Exception):
    pass
