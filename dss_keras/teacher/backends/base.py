"""The backend interface: `Backend`, the `Generation` it returns, and `TeacherError`.

See `dss_keras.teacher.backends` for what a backend does.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Iterator, Sequence


class TeacherError(RuntimeError):
    """A failure that every request would share (authentication, model, URL, a parameter)."""


@dataclasses.dataclass(frozen=True)
class Generation:
    """The completions of one prompt.

    Attributes:
        texts: The sampled completions (empty when `error` is set).
        finish_reasons: One per text, e.g. `"stop"` or `"length"`.
        usage: Token counts, `{"prompt_tokens": ..., "completion_tokens": ...}`,
            and where known `"reasoning_tokens"` (part of the completion
            tokens), `"unanswered_requests"` (sent, but no reply came: they
            may be billed) and `"discarded_completion_tokens"` (of a reply
            asked again with a larger budget).
        error: Why the request failed after its retries, else `None`.
        attempts: Requests made (retries included).
        reasonings: One per text: the reasoning the endpoint returned in its
            own field, or `None`.
        request: The sampling parameters actually sent, e.g.
            `{"n": 1, "max_completion_tokens": 4096}`.
        refused: Whether `error` is the server's refusal of the request (an
            HTTP 4xx that no retry changes), rather than retries running out.
    """

    texts: tuple[str, ...]
    finish_reasons: tuple[str | None, ...] = ()
    usage: dict = dataclasses.field(default_factory=dict)
    error: str | None = None
    attempts: int = 1
    reasonings: tuple[str | None, ...] = ()
    request: dict = dataclasses.field(default_factory=dict)
    refused: bool = False


class Backend:
    """The interface of a teacher. Subclasses implement `generate` or `iter_generate`.

    Attributes:
        model: The model's name, stored with every output.
        batch_size: Prompts per `generate` call when `iter_generate` is not
            overridden.

    Examples:

    >>> class Echo(Backend):
    ...     model = "echo"
    ...     def generate(self, prompts, n=1, temperature=0.0, max_tokens=None, stop=None):
    ...         return [Generation((str(p),) * n) for p in prompts]
    >>> [g.texts for g in Echo().generate(["a", "b"], n=2)]
    [('a', 'a'), ('b', 'b')]
    >>> [(i, g.texts) for i, g in Echo().iter_generate(["a"])]
    [(0, ('a',))]
    """

    model: str = "unknown"
    batch_size: int = 8
    # What the backend changed to suit its endpoint (`{"change", "message"}`).
    adaptations: Sequence[dict] = ()
    # The request parameters it sends, where it has any (`RequestParameters`).
    parameters = None
    # Whether `generate` takes `Prompt.messages` (chat) or `Prompt.text`.
    wants_messages: bool = False

    def generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
    ) -> list[Generation]:
        """One `Generation` per prompt, in order."""
        done = dict(self.iter_generate(prompts, n, temperature, max_tokens, stop))
        return [done[i] for i in range(len(prompts))]

    def iter_generate(
        self,
        prompts: Sequence,
        n: int = 1,
        temperature: float = 0.0,
        max_tokens: int | None = None,
        stop: Sequence[str] | None = None,
        admit: Callable[[], bool] | None = None,
    ) -> Iterator[tuple[int, Generation]]:
        """`(index, Generation)` pairs as they finish (by default, batch by batch).

        `admit()` is asked before each new prompt (here: each batch) is
        started; once it says `False`, what is started finishes and nothing
        new starts (a spending limit).
        """
        if type(self).generate is Backend.generate:
            raise NotImplementedError("A backend implements `generate` or `iter_generate`.")
        for start in range(0, len(prompts), self.batch_size):
            if admit is not None and not admit():
                return
            batch = prompts[start:start + self.batch_size]
            for offset, generation in enumerate(
                self.generate(batch, n, temperature, max_tokens, stop)
            ):
                yield start + offset, generation

    def describe(self) -> dict:
        """What is stored about the backend with every output."""
        return {"backend": type(self).__name__, "model": self.model}

    def close(self) -> None:
        """Releases connections or memory; the default does nothing."""


def cut_at_stop(text: str, stop: Sequence[str] | None) -> str:
    """The text up to its first stop sequence.

    Examples:

    >>> cut_at_stop("answer.\\nQ: next", ["\\nQ:"])
    'answer.'
    """
    cut = len(text)
    for marker in stop or ():
        index = text.find(marker)
        if index >= 0:
            cut = min(cut, index)
    return text[:cut]
