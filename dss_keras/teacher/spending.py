"""Token counts, prices and the spending limit of a teacher run.

- `TokenCounter` counts the tokens of a prompt: exactly with a Hugging Face
  `tokenizer.json` (the open model's own, read offline with the `tokenizers`
  package), otherwise with an estimate, labelled as one: 4 characters a
  token, OpenAI's rule of thumb for English, plus 4 tokens a chat message
  for the chat format's markers.
- `Prices` turns tokens into money, in US dollars per million tokens.
- `SpendingLimit` stops a run cleanly once it has spent a number of tokens
  or dollars. What is in flight when the limit is reached still finishes and
  is written, so a run may overshoot by at most twice `concurrency` requests
  (in flight, and received but not yet counted). A
  request sent but never answered (deadline, dropped connection) may be
  billed all the same: it is charged at its prompt's estimate plus its whole
  completion budget.

Examples:

>>> counter = TokenCounter()
>>> counter.count("The answer is (b) refrigerator."), counter.exact
(8, False)
>>> Prices(input=0.15, output=0.60).cost(1_000_000, 500_000)
0.45
>>> limit = SpendingLimit(max_tokens=100)
>>> limit.charge({"prompt_tokens": 80, "completion_tokens": 30})
>>> limit.exhausted, limit.reason
(True, 'spent 110 tokens of the limit of 100')
"""

from __future__ import annotations

import dataclasses
import math
import os

CHARACTERS_PER_TOKEN = 4
TOKENS_PER_MESSAGE = 4
TOKENS_PER_REPLY = 3


class TokenCounter:
    """Counts tokens: exactly with a `tokenizer.json`, else an estimate.

    Args:
        tokenizer: A Hugging Face `tokenizer.json` file, or `None`.

    Attributes:
        exact: Whether texts are counted by a real tokenizer.
        label: How the count is made, for reports.
    """

    def __init__(self, tokenizer: str | os.PathLike | None = None):
        self._tokenizer = None
        if tokenizer is not None:
            from tokenizers import Tokenizer

            self._tokenizer = Tokenizer.from_file(os.fspath(tokenizer))
            self.label = f"counted with {os.fspath(tokenizer)}"
        else:
            self.label = (f"estimate: {CHARACTERS_PER_TOKEN} characters a token; give a "
                          "tokenizer.json to count")
        self.exact = self._tokenizer is not None

    def count(self, text: str) -> int:
        """Tokens of one text."""
        if self._tokenizer is not None:
            return len(self._tokenizer.encode(text, add_special_tokens=False).ids)
        return math.ceil(len(text) / CHARACTERS_PER_TOKEN)

    def count_prompt(self, prompt, chat: bool) -> int:
        """Tokens of a `Prompt` as sent: its messages (chat) or its text."""
        if not chat:
            return self.count(prompt.text)
        return TOKENS_PER_REPLY + sum(TOKENS_PER_MESSAGE + self.count(m["content"])
                                      for m in prompt.messages)


@dataclasses.dataclass(frozen=True)
class Prices:
    """US dollars per million prompt (`input`) and completion (`output`) tokens."""

    input: float
    output: float

    def __post_init__(self):
        if self.input < 0 or self.output < 0:
            raise ValueError(f"Prices must not be negative. Received: {self}")

    def cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        return round((prompt_tokens * self.input + completion_tokens * self.output) / 1e6, 10)


class SpendingLimit:
    """What a run may spend: tokens (prompt and completion together) and/or dollars.

    Args:
        max_tokens: Tokens at most, or `None`.
        max_cost: Dollars at most, or `None` (needs `prices`).
        prices: To count dollars.
    """

    def __init__(self, max_tokens: int | None = None, max_cost: float | None = None,
                 prices: Prices | None = None):
        if max_cost is not None and prices is None:
            raise ValueError("A spending limit in money needs the prices per million input and "
                             f"output tokens. Received: max_cost={max_cost}")
        self.max_tokens, self.max_cost, self.prices = max_tokens, max_cost, prices
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def charge(self, usage: dict, unanswered_prompt: int = 0, budget: int = 0) -> None:
        """Adds a reply's usage, and the worst case of each unanswered request."""
        unanswered = usage.get("unanswered_requests", 0)
        self.prompt_tokens += usage.get("prompt_tokens", 0) + unanswered * unanswered_prompt
        self.completion_tokens += usage.get("completion_tokens", 0) + unanswered * budget

    @property
    def cost(self) -> float | None:
        if self.prices is None:
            return None
        return self.prices.cost(self.prompt_tokens, self.completion_tokens)

    @property
    def reason(self) -> str | None:
        """Why the limit is reached, or `None` while it is not."""
        spent = self.prompt_tokens + self.completion_tokens
        if self.max_tokens is not None and spent >= self.max_tokens:
            return f"spent {spent} tokens of the limit of {self.max_tokens}"
        if self.max_cost is not None and self.cost >= self.max_cost:
            return f"spent ${self.cost:.4f} of the limit of ${self.max_cost:.4f}"
        return None

    @property
    def exhausted(self) -> bool:
        return self.reason is not None
