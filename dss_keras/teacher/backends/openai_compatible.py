"""Any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, llama.cpp server, TGI, Anthropic's layer).

Requests go through the official `openai` client's asynchronous API, at most
`concurrency` at a time.

- **Deadline.** `timeout` bounds each request as a whole (connecting,
  waiting and reading together), so a server that drips its reply cannot
  hold a request open; a request past its deadline is retried like a
  timeout. The default, 600 s, leaves a reasoning model minutes to think.
- **Retries.** A request that times out, cannot connect, or gets HTTP 408,
  409, 429 or 5xx, or a reply that is not valid JSON, is retried up to
  `max_retries` times, after a delay that grows exponentially with full
  jitter and is never shorter than the server's `Retry-After`. The `openai`
  client's own retries are off, so that every attempt is counted.
- **Refusals.** HTTP 401, 403 and 404 stop the run (a wrong key, model or
  URL would fail every request). An HTTP 400 that names a parameter the
  endpoint does not take is adapted to (`adaptation.adapt`: resent with the
  parameter renamed or left out, and kept so for the rest of the run);
  other 4xx fail that prompt only, as `Generation.refused`.
- **The first request goes alone.** Until it is answered no other request
  is sent, so that what the endpoint refuses is learnt from one request and
  not from `concurrency` of them: an adaptation costs one extra request per
  parameter, not one per request in flight.
- **Reasoning.** The `reasoning_content` / `reasoning` field of a reply is
  returned apart from the text (`Generation.reasonings`); reasoning tokens
  are counted in the usage. A reply with reasoning makes the default budget
  `REASONING_BUDGET`, and a first reply that stopped by length with no
  answer is asked again once with that budget.

The API key is read from an environment variable (`OPENAI_API_KEY` by
default) when the client is built and is never stored, printed or written.
A local server (`base_url` given) without a key gets a placeholder key.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import os
import queue
import random
import threading
from typing import Callable, Iterator, Sequence

from dss_keras.teacher.backends.base import Backend, Generation, TeacherError
from dss_keras.teacher.backends.adaptation import (
    OMITTABLE,
    REASONING_BUDGET,
    TOKEN_PARAMETERS,
    Refusal,
    RequestParameters,
    adapt,
    request_body,
)
from dss_keras.teacher.reasoning import split_reasoning

logger = logging.getLogger(__name__)

ROUTES = ("chat", "completions")
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUSES = frozenset({401, 403, 404})
DEFAULT_DEADLINE = 600.0
"""Seconds a request may take, all included: minutes, for reasoning models."""
# The longest Retry-After that is waited for; a longer one counts as a failure.
MAX_RETRY_AFTER = 120.0
_DONE = object()


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None, unanswered=False):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.unanswered = unanswered


class _Failed(Exception):
    pass


class _Adapt(Exception):
    def __init__(self, parameters: RequestParameters, change: str, message: str):
        super().__init__(change)
        self.parameters, self.change, self.message = parameters, change, message


@dataclasses.dataclass
class _Outcome:
    """One request after its retries: the reply, or why there is none."""

    reply: object = None
    sent: dict = dataclasses.field(default_factory=dict)
    attempts: int = 0
    unanswered: int = 0
    error: str | None = None
    refused: bool = False


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


def read_choice(choice, route: str) -> tuple[str, str | None]:
    """`(text, reasoning)` of one choice; the reasoning from the reply's own field."""
    if route != "chat":
        extra = choice.model_extra or {}
        return choice.text or "", extra.get("reasoning_content") or extra.get("reasoning")
    message = choice.message
    if message is None:
        return "", None
    extra = message.model_extra or {}
    return message.content or "", extra.get("reasoning_content") or extra.get("reasoning")


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
        timeout: Seconds per request, connecting, waiting and reading together.
        max_retries: Retries of one request after its first attempt.
        backoff: Seconds of the first retry delay's upper bound; it doubles
            with each retry, up to `max_backoff`.
        max_backoff: The largest delay bound, in seconds.
        seed: Sent to servers that support seeded sampling.
        parameters: The request parameters to start from (what the endpoint
            is known to take); adapted to its refusals as the run goes.

    Examples:

    >>> backend = OpenAIBackend("my-model", base_url="http://127.0.0.1:9/v1",
    ...                         concurrency=4)
    >>> backend.describe()["route"], backend.wants_messages
    ('chat', True)
    >>> OpenAIBackend("o3", base_url="http://127.0.0.1:9/v1",
    ...               parameters=RequestParameters.for_reasoning_model()).parameters.budget(None)
    4096
    """

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        route: str = "chat",
        concurrency: int = 8,
        timeout: float = DEFAULT_DEADLINE,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        seed: int | None = None,
        parameters: RequestParameters | None = None,
    ):
        if route not in ROUTES:
            raise ValueError(f"`route` must be one of {ROUTES}. Received: route={route!r}")
        if concurrency < 1:
            raise ValueError(f"`concurrency` must be at least 1. Received: concurrency={concurrency}")
        if not timeout > 0:
            raise ValueError(f"`timeout` must be positive. Received: timeout={timeout}")
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
        self.parameters = parameters or RequestParameters()
        self.adaptations: list[dict] = []
        self.wants_messages = route == "chat"
        self.batch_size = concurrency

    def describe(self) -> dict:
        return {"backend": "openai", "model": self.model, "base_url": self.base_url,
                "route": self.route}

    def client(self, sync: bool = False):
        """An `openai` client for this endpoint (its own retries off).

        Raises:
            ValueError: no API key for OpenAI (checked here, so that a request
                file can be written for `vllm run-batch` without one).
        """
        import openai

        if self.base_url is None and not os.environ.get(self.api_key_env):
            raise ValueError(f"Set the API key in the environment variable {self.api_key_env}, "
                             "or give the base URL of a local server.")
        kind = openai.OpenAI if sync else openai.AsyncOpenAI
        return kind(api_key=os.environ.get(self.api_key_env) or "none",
                    base_url=self.base_url, timeout=self.timeout, max_retries=0)

    def iter_generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        admit: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, Generation]]:
        """`(index, Generation)` as each request finishes; at most `concurrency` in flight.

        The first prompt is sent alone; the others follow once its answer is
        read by the caller (so that a spending limit or a refusal counts it).
        """
        if not len(prompts):
            return
        results: queue.Queue = queue.Queue()
        probed = threading.Event()  # set once the caller has taken the first answer
        state = {}

        def admitted():
            for i in range(len(prompts)):
                if admit is not None and not admit():
                    return
                yield i

        async def run():
            state["task"] = asyncio.current_task()
            state["loop"] = asyncio.get_running_loop()
            client = self.client()
            indices = admitted()

            async def answer(i):
                results.put((i, await self._generate_one(
                    client, prompts[i], n, temperature, max_tokens, stop)))

            async def worker():
                for i in indices:
                    await answer(i)

            workers = []
            try:
                first = next(indices, None)
                if first is not None:
                    await answer(first)  # alone: what the endpoint refuses is learnt once
                    while not probed.is_set():  # and read (counted, written) before the rest
                        await asyncio.sleep(0.002)
                    workers = [asyncio.create_task(worker()) for _ in range(
                        min(self.concurrency, len(prompts) - 1))]
                    await asyncio.gather(*workers)
            finally:
                # Every worker ends before the client closes: `gather` returns
                # at the first worker that fails or is cancelled.
                for task in workers:
                    task.cancel()
                await asyncio.gather(*workers, return_exceptions=True)
                await client.close()

        def main():
            try:
                asyncio.run(run())
                results.put(_DONE)
            except BaseException as e:  # handed to the consuming thread
                results.put(e)

        thread = threading.Thread(target=main, name="openai-backend", daemon=True)
        thread.start()
        try:
            while (item := results.get()) is not _DONE:
                if isinstance(item, BaseException):
                    raise item
                yield item
                probed.set()
        finally:
            if thread.is_alive() and "loop" in state:
                try:
                    state["loop"].call_soon_threadsafe(state["task"].cancel)
                except RuntimeError:  # the loop closed meanwhile: nothing left to stop
                    pass
            thread.join(timeout=10)

    async def _generate_one(self, client, prompt, n, temperature, max_tokens, stop):
        texts, reasons, reasonings = [], [], []
        usage = collections.Counter(prompt_tokens=0, completion_tokens=0)
        attempts, sent, budget_raised = 0, {}, False
        while len(texts) < n:
            outcome = await self._request_with_retries(
                client, prompt, n - len(texts), temperature, max_tokens, stop)
            attempts += outcome.attempts
            sent = outcome.sent or sent
            if outcome.unanswered:
                usage["unanswered_requests"] += outcome.unanswered
            if outcome.error is None and not outcome.reply.choices:
                outcome.error = "empty choices"
            if outcome.error is not None:
                return Generation((), (), dict(usage), outcome.error, attempts,
                                  request=sent, refused=outcome.refused)
            add_usage(usage, outcome.reply.usage)
            choices = [read_choice(c, self.route) for c in outcome.reply.choices]
            choices = choices[:n - len(texts)]
            if self._raise_budget(choices, outcome.reply.choices, outcome.sent,
                                  max_tokens is None and not budget_raised):
                budget_raised = True  # the reply is paid for, but not under the new budget
                usage["discarded_completion_tokens"] += getattr(
                    outcome.reply.usage, "completion_tokens", 0) or 0
                continue
            for (text, reasoning), choice in zip(choices, outcome.reply.choices):
                texts.append(text)
                reasonings.append(reasoning)
                reasons.append(choice.finish_reason)
        return Generation(tuple(texts), tuple(reasons), dict(usage), None, attempts,
                          tuple(reasonings), sent)

    def _raise_budget(self, choices, raw_choices, sent: dict, may_raise: bool) -> bool:
        """Notes a reasoning model; `True` when its reply should be asked again with more budget.

        Asked again (once) when the budget was the default for models that do
        not reason and a choice stopped by length with no answer.
        """
        reasons = [c.finish_reason for c in raw_choices]
        thought = [r is not None or split_reasoning(t)[0] is not None for t, r in choices]
        if not any(thought):
            return False
        before = self.parameters
        if not before.reasoning:
            self._adopt(before, dataclasses.replace(before, reasoning=True),
                        "the model reasons: default budget "
                        f"{REASONING_BUDGET} completion tokens", "")
        no_answer = any(reason == "length" and not split_reasoning(text)[1].strip()
                        for (text, _), reason in zip(choices, reasons))
        budget = max(sent.get(name, 0) for name in TOKEN_PARAMETERS)
        return no_answer and may_raise and budget < REASONING_BUDGET

    def _adopt(self, before: RequestParameters, after: RequestParameters, change: str,
               message: str) -> None:
        """Keeps an adaptation for the rest of the run (once, whichever request found it)."""
        if self.parameters is not before:
            return
        self.parameters = after
        self.adaptations.append({"change": change, "message": message})
        logger.warning("Teacher endpoint: %s%s", change, f" ({message})" if message else "")

    async def _request_with_retries(self, client, prompt, n, temperature, max_tokens, stop):
        outcome = _Outcome()
        retries = 0
        for _ in range(self.max_retries + 1 + len(TOKEN_PARAMETERS) + len(OMITTABLE)):
            parameters = self.parameters
            body = request_body(self.model, self.route, prompt, parameters, n, temperature,
                                max_tokens, stop, self.seed)
            outcome.sent = {k: v for k, v in body.items()
                            if k not in ("model", "messages", "prompt")}
            outcome.attempts += 1
            try:
                # `asyncio.timeout`, not `wait_for`: wait_for (3.11) can swallow a
                # cancellation that arrives as the request completes.
                async with asyncio.timeout(self.timeout):
                    outcome.reply = await self._request(client, body, parameters)
                return outcome
            except TimeoutError:
                error = _Retryable(f"deadline of {self.timeout:g} s passed", unanswered=True)
            except _Retryable as e:
                error = e
            except _Adapt as e:
                self._adopt(parameters, e.parameters, e.change, e.message)
                continue
            except _Failed as e:
                outcome.error, outcome.refused = str(e), True
                return outcome
            outcome.unanswered += error.unanswered
            if retries == self.max_retries:
                outcome.error = f"{error.reason} (after {retries + 1} attempts)"
                return outcome
            if error.retry_after is not None and error.retry_after > MAX_RETRY_AFTER:
                outcome.error = f"{error.reason} (Retry-After {error.retry_after:.0f} s)"
                return outcome
            delay = random.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** retries))
            if error.retry_after is not None:
                delay = max(delay, error.retry_after)
            retries += 1
            await asyncio.sleep(delay)
        outcome.error = "the endpoint kept refusing the adapted parameters"
        return outcome

    async def _request(self, client, body, parameters):
        import openai

        from openai.types import Completion
        from openai.types.chat import ChatCompletion

        try:
            # The client's generic `post` sends the plain JSON body: the typed
            # `create` methods re-validate every message of the few-shot prompt,
            # which costs ~6 ms of CPU per request.
            if self.route == "chat":
                return await client.post("/chat/completions", cast_to=ChatCompletion, body=body)
            return await client.post("/completions", cast_to=Completion, body=body)
        except openai.APITimeoutError:
            raise _Retryable("timeout", unanswered=True) from None
        except openai.APIConnectionError as e:
            raise _Retryable(f"connection error: {type(e.__cause__).__name__}",
                             unanswered=True) from None
        except openai.APIStatusError as e:
            self._refused(e, body, parameters)
        except (openai.APIResponseValidationError, json.JSONDecodeError, ValueError) as e:
            raise _Retryable(f"invalid response: {type(e).__name__}") from None

    def _refused(self, error, body, parameters):
        """Raises what an HTTP error status means: retry, adapt, fail the prompt, or stop."""
        status = error.status_code
        refusal = Refusal.from_body(error.body, error.message)
        if status in FATAL_STATUSES:
            raise TeacherError(f"HTTP {status} from the teacher endpoint "
                               f"({self.base_url or 'OpenAI'}, model {self.model!r}): "
                               f"{refusal.message[:200]}") from None
        if status in RETRY_STATUSES:
            raise _Retryable(f"HTTP {status}", _retry_after(error.response.headers)) from None
        if status in (400, 422):
            adapted = adapt(parameters, refusal, body)
            if adapted is not None:
                raise _Adapt(*adapted, refusal.message[:200]) from None
        raise _Failed(f"HTTP {status}: {refusal.message[:200]}") from None


def add_usage(usage: collections.Counter, reported) -> None:
    """Adds a reply's token counts, reasoning tokens included, to `usage`."""
    if reported is None:
        return
    usage["prompt_tokens"] += reported.prompt_tokens or 0
    usage["completion_tokens"] += reported.completion_tokens or 0
    details = getattr(reported, "completion_tokens_details", None)
    reasoning = getattr(details, "reasoning_tokens", None) if details is not None else None
    if reasoning:
        usage["reasoning_tokens"] += reasoning
