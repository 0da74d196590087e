"""What an OpenAI-compatible endpoint accepts: request parameters that adapt to its refusals.

Endpoints today disagree on the sampling parameters. Reasoning models
(OpenAI's o-series and gpt-5 family, and servers that copy their API)
refuse `max_tokens` ("Use 'max_completion_tokens' instead"), `stop` and any
temperature but 1; Anthropic's OpenAI-compatible layer takes `n = 1` only.
`RequestParameters` says what a request carries; `adapt` reads an HTTP 400
and returns the parameters to resend with:

| the endpoint refuses            | resent with                                     |
|---------------------------------|-------------------------------------------------|
| `max_tokens`                    | `max_completion_tokens` (a reasoning model)     |
| `max_completion_tokens`         | `max_tokens`                                    |
| `temperature`, `stop`, `seed`   | the parameter left out (stop strings are then   |
|                                 | applied to the text)                            |
| `n` above 1                     | one request per sample                          |

Each parameter adapts at most once a run, so a refusal costs at most one
extra request per parameter. A user who knows the endpoint says so up front
(`RequestParameters.for_reasoning_model()`, `omitted=...`).

A reasoning model spends part of its completion budget on thinking: with
256 tokens it often stops with no answer at all. Its default budget is
`REASONING_BUDGET` instead of `DEFAULT_BUDGET`, unless a budget is given.

Examples:

>>> parameters = RequestParameters()
>>> parameters.sampling_body(n=1, temperature=0.0, max_tokens=None, stop=["\\nQ:"])
{'n': 1, 'max_tokens': 256, 'temperature': 0.0, 'stop': ['\\nQ:']}
>>> refusal = Refusal("'max_tokens' is not supported with this model. "
...                   "Use 'max_completion_tokens' instead.", "max_tokens", "unsupported_parameter")
>>> parameters, change = adapt(parameters, refusal, {"n": 1, "max_tokens": 256})
>>> change
'max_tokens renamed max_completion_tokens'
>>> parameters.sampling_body(n=1, temperature=0.0, max_tokens=None, stop=None)
{'n': 1, 'max_completion_tokens': 4096, 'temperature': 0.0}
"""

from __future__ import annotations

import dataclasses
import re
from typing import Sequence

DEFAULT_BUDGET = 256
"""Completion tokens per request unless told, for a model that does not reason."""
REASONING_BUDGET = 4096
"""Completion tokens per request unless told, for a reasoning model (thinking included)."""
TOKEN_PARAMETERS = ("max_tokens", "max_completion_tokens")
OMITTABLE = ("temperature", "stop", "seed", "n")
"""Parameters that can be left out of every request (`n`: one request per sample)."""
# The most stop sequences OpenAI's API takes.
MAX_STOP = 4


@dataclasses.dataclass(frozen=True)
class RequestParameters:
    """The sampling parameters a request carries.

    Args:
        token_parameter: `"max_tokens"` or `"max_completion_tokens"`.
        omitted: Parameters left out of every request, from `OMITTABLE`.
        reasoning: Whether the model reasons (its default budget is then
            `REASONING_BUDGET`).
        adapted: Parameters already changed by `adapt` (each changes once).
    """

    token_parameter: str = "max_tokens"
    omitted: frozenset = frozenset()
    reasoning: bool = False
    adapted: frozenset = frozenset()

    def __post_init__(self):
        if self.token_parameter not in TOKEN_PARAMETERS:
            raise ValueError(f"`token_parameter` must be one of {TOKEN_PARAMETERS}. "
                             f"Received: token_parameter={self.token_parameter!r}")
        unknown = set(self.omitted) - set(OMITTABLE)
        if unknown:
            raise ValueError(f"Only {', '.join(OMITTABLE)} can be left out. "
                             f"Received: omitted={sorted(unknown)}")
        object.__setattr__(self, "omitted", frozenset(self.omitted))

    @classmethod
    def for_reasoning_model(cls, omitted: Sequence[str] = ()) -> "RequestParameters":
        """What OpenAI's reasoning models accept: `max_completion_tokens`, no temperature or stop."""
        return cls("max_completion_tokens", frozenset({"temperature", "stop", *omitted}), True)

    def budget(self, max_tokens: int | None) -> int:
        """The completion budget sent: `max_tokens`, or the default for this kind of model."""
        if max_tokens is not None:
            return max_tokens
        return REASONING_BUDGET if self.reasoning else DEFAULT_BUDGET

    def sampling_body(self, n: int, temperature: float, max_tokens: int | None,
                      stop: Sequence[str] | None, seed: int | None = None) -> dict:
        """The sampling part of a request body (`n` is 1 when `n` is left out)."""
        body = {"n": 1 if "n" in self.omitted else n,
                self.token_parameter: self.budget(max_tokens)}
        if "temperature" not in self.omitted:
            body["temperature"] = temperature
        if stop and "stop" not in self.omitted:
            body["stop"] = list(stop)[:MAX_STOP]
        if seed is not None and "seed" not in self.omitted:
            body["seed"] = seed
        return body

    def describe(self) -> dict:
        """What the report says about the parameters sent."""
        return {"token_parameter": self.token_parameter, "omitted": sorted(self.omitted),
                "reasoning": self.reasoning}


def request_body(model: str, route: str, prompt, parameters: RequestParameters, n: int,
                 temperature: float, max_tokens: int | None, stop: Sequence[str] | None,
                 seed: int | None = None) -> dict:
    """The JSON body of one request: `/chat/completions` (`route="chat"`) or `/completions`.

    Examples:

    >>> request_body("m", "completions", "Q: hi\\nA:", RequestParameters(), 1, 0.0, 8, None)
    {'model': 'm', 'n': 1, 'max_tokens': 8, 'temperature': 0.0, 'prompt': 'Q: hi\\nA:'}
    """
    body = {"model": model, **parameters.sampling_body(n, temperature, max_tokens, stop, seed)}
    if route == "chat":
        body["messages"] = (list(prompt.messages) if hasattr(prompt, "messages")
                            else [{"role": "user", "content": str(prompt)}])
    else:
        body["prompt"] = prompt.text if hasattr(prompt, "text") else str(prompt)
    return body


@dataclasses.dataclass(frozen=True)
class Refusal:
    """What an HTTP 400 said: the message, and the parameter and code where the server names them."""

    message: str
    param: str | None = None
    code: str | None = None

    @classmethod
    def from_body(cls, body, fallback: str = "") -> "Refusal":
        """From an error body `{"error": {"message", "param", "code"}}` (or its inner object)."""
        error = body.get("error", body) if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls(str(body or fallback))
        return cls(str(error.get("message") or fallback), error.get("param"), error.get("code"))

    @property
    def unsupported(self) -> bool:
        """Whether it says a parameter or value is not supported (not merely out of range)."""
        return self.code in ("unsupported_parameter", "unsupported_value") or re.search(
            r"unsupported|not supported|does not support|only the default|must be exactly",
            self.message, re.IGNORECASE) is not None

    def names(self, parameter: str) -> bool:
        """Whether the refusal is about `parameter`."""
        if self.param is not None:
            return self.param == parameter
        if parameter == "n":  # e.g. "n: must be 1", "Only n=1 is supported"
            return re.search(r"(?<![\w'.-])'?n'?(?![\w'.-])", self.message) is not None
        return re.search(rf"(?<![\w]){re.escape(parameter)}(?![\w])", self.message) is not None


def adapt(parameters: RequestParameters, refusal: Refusal,
          body: dict) -> tuple[RequestParameters, str] | None:
    """The parameters to resend with after `refusal`, and what changed; `None` if nothing helps.

    `body` is the refused request's sampling body: only a parameter it carried
    is changed, only once a run, and only when the endpoint says it does not
    support it (a value out of range is the user's to fix).

    Examples:

    >>> adapt(RequestParameters(), Refusal("'temperature' must be at most 1", "temperature"),
    ...       {"temperature": 1.5}) is None
    True
    >>> adapt(RequestParameters(), Refusal("n: Must be exactly 1"), {"n": 5})[1]
    'one request per sample (n > 1 refused)'
    """
    def changed(parameter, note, **fields):
        adapted = parameters.adapted | {parameter}
        return dataclasses.replace(parameters, adapted=adapted, **fields), note

    if not refusal.unsupported:
        return None  # e.g. a value out of range: resending without it would change the run
    token = parameters.token_parameter
    other = TOKEN_PARAMETERS[1 - TOKEN_PARAMETERS.index(token)]
    if token in body and token not in parameters.adapted and refusal.names(token):
        if other in refusal.message or token == "max_completion_tokens":
            return changed(token, f"{token} renamed {other}", token_parameter=other,
                           reasoning=parameters.reasoning or other == "max_completion_tokens")
    for name in ("temperature", "stop", "seed"):
        if name in body and name not in parameters.adapted and refusal.names(name):
            return changed(name, f"{name} left out", omitted=parameters.omitted | {name})
    if body.get("n", 1) > 1 and "n" not in parameters.adapted and refusal.names("n"):
        return changed("n", "one request per sample (n > 1 refused)",
                       omitted=parameters.omitted | {"n"})
    return None
