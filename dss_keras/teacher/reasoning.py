"""A reasoning model's thinking, kept apart from its answer.

Open reasoning models served without a reasoning parser (vLLM, Ollama,
llama.cpp) write their thinking into the completion, in a `<think>` block
before the answer; servers with a parser, and OpenAI-style APIs, return it
in a `reasoning_content` or `reasoning` field instead. Either way the
thinking may hold its own "So the answer is ..." line, so it must never
reach the rationale or the answer parser: `split_reasoning` takes it out of
the text first.

Examples:

>>> split_reasoning("<think>Maybe (a). So the answer is (a).</think>Ice melts. So the answer is (b).")
('Maybe (a). So the answer is (a).', 'Ice melts. So the answer is (b).')
>>> split_reasoning("Plain answer. So the answer is yes.")
(None, 'Plain answer. So the answer is yes.')
"""

from __future__ import annotations

import re

_OPEN, _CLOSE = "<think>", "</think>"
_BLOCK = re.compile(r"\s*<think>(.*?)</think>", re.DOTALL)


def split_reasoning(text: str) -> tuple[str | None, str]:
    """`(reasoning, answer)` of a completion; `reasoning` is `None` when there is none.

    - `<think>...</think>` blocks are reasoning; the rest is the answer.
    - A `</think>` with no opening tag (the chat template wrote `<think>` into
      the prompt): everything before it is reasoning.
    - A `<think>` never closed (the completion stopped inside its thinking):
      everything after it is reasoning and the answer is what came before.

    Examples:

    >>> split_reasoning("Let me see...</think>\\nSo the answer is no.")
    ('Let me see...', 'So the answer is no.')
    >>> split_reasoning("<think>Still thinking when the budget ran")
    ('Still thinking when the budget ran', '')
    """
    if _OPEN not in text and _CLOSE not in text:
        return None, text
    thoughts = []
    head, close, tail = text.partition(_CLOSE)
    if close and _OPEN not in head:  # the opening tag was in the prompt
        thoughts.append(head.strip())
        text = tail
    for match in _BLOCK.finditer(text):
        thoughts.append(match.group(1).strip())
    text = _BLOCK.sub("", text)
    before, opened, unfinished = text.partition(_OPEN)
    if opened:
        thoughts.append(unfinished.strip())
        text = before
    return "\n\n".join(t for t in thoughts if t), text.strip()


def join_reasoning(*parts: str | None) -> str | None:
    """The non-empty parts, one paragraph each; `None` when all are empty.

    Examples:

    >>> join_reasoning(None, "a", "", "b")
    'a\\n\\nb'
    """
    kept = [p for p in parts if p]
    return "\n\n".join(kept) if kept else None
