"""What the teacher answered for one input, as the record written to the output.

`teacher_record` takes the `Generation` of an input whose request succeeded
and returns its output line:

```
{"id", "input", "label", "rationale", "llm_label",
 "teacher": {"model", "backend", "task", "prompt_version", "sampling", "request",
             "completions", "finish_reasons", "status", "error", "cause",
             "agreement", "usage", "attempts"[, "reasoning"]}}
```

- Reasoning (`<think>` blocks, or the endpoint's reasoning field) is taken
  out of every completion before anything else: it never reaches the
  rationale or the parser, and is kept in `teacher.reasoning` only when
  asked (`keep_reasoning`).
- Every sample is parsed; the labels vote (equal equation values vote
  together), the kept rationale is the first one whose label won, and
  `agreement` is the winner's share of all samples.
- `status` is `ok`, `parse_error` (no sample parsed: `cause` says why, e.g.
  `stopped by length with no answer`), or `over_budget`: the completion is
  longer than the token budget allowed (a server that ignored it), so it is
  not trusted, and it is stored cut to `STORED_CHARACTERS_PER_TOKEN` times
  the budget, with its full length in `teacher.completion_chars`.
"""

from __future__ import annotations

import collections
import itertools
from typing import Sequence

from dss_keras import metrics
from dss_keras.data.records import Record
from dss_keras.teacher.backends import Generation, cut_at_stop
from dss_keras.teacher.prompts import PromptTemplate
from dss_keras.teacher.reasoning import join_reasoning, split_reasoning

STATUSES = ("ok", "parse_error", "over_budget")
# No tokenizer packs more characters than this into one token: a completion
# longer than this many characters per budgeted token ran past its budget.
STORED_CHARACTERS_PER_TOKEN = 16
NO_ANSWER = "stopped by length with no answer"


def vote_key(label: str, metric: str):
    """What makes two labels the same vote: their value for equations, else their text."""
    if metric in metrics.EQUATION_BENCHMARKS:
        value = metrics.evaluate_arithmetic(label)
        if value is not None:
            return round(value, 9)
    return metrics.normalize_text(label)


def majority_vote(labels: Sequence[str | None], metric: str = "exact_match"):
    """`(index of the kept sample, agreement)`; `(None, 0.0)` when no label parsed.

    Ties go to the label seen first; the kept sample is the first of the winners.

    Examples:

    >>> majority_vote(["yes", None, "no", "Yes"])
    (0, 0.5)
    >>> majority_vote(["(2 + 2)", "(4)", "(3 + 2)"], "svamp")
    (0, 0.6666666666666666)
    """
    keys = [None if label is None else vote_key(label, metric) for label in labels]
    counts = collections.Counter(k for k in keys if k is not None)
    if not counts:
        return None, 0.0
    best = max(counts.values())
    winner = next(k for k in keys if k is not None and counts[k] == best)
    return keys.index(winner), best / len(labels)


def failure_cause(error: str, finish_reason: str | None = None, answer: str = "x") -> str:
    """A short, countable cause of a parse failure.

    Examples:

    >>> failure_cause("no answer marker 'So the answer is'", "length", answer="")
    'stopped by length with no answer'
    >>> failure_cause("letter and text disagree: (a) is 'oven', the answer says 'sink'")
    'letter and choice text disagree'
    """
    if finish_reason == "length":
        return NO_ANSWER if not answer.strip() else "truncated (max tokens reached)"
    for needle, cause in (("is not one of", "label outside the label set"),
                          ("disagree", "letter and choice text disagree"),
                          ("no answer marker", "no answer marker"),
                          ("times the answer marker", "several answer markers"),
                          ("does not match the format", "answer does not match the format"),
                          ("unbalanced", "answer cut inside parentheses"),
                          ("empty", error)):
        if needle in error:
            return cause
    return error


def over_budget(generation: Generation, budget: int, answers: Sequence[str]) -> bool:
    """Whether the completions are longer than `budget` tokens each allowed.

    By the server's own count where it reports one, else by their length.
    """
    reported = generation.usage.get("completion_tokens")
    if reported:
        reported -= generation.usage.get("discarded_completion_tokens", 0)
        return reported > budget * max(1, len(generation.texts))
    return any(len(a) > budget * STORED_CHARACTERS_PER_TOKEN for a in answers)


def teacher_record(record: Record, generation: Generation, template: PromptTemplate,
                   metadata: dict, budget: int, keep_reasoning: bool = False) -> dict:
    """The output line of one input whose request succeeded.

    Args:
        record: The input.
        generation: Its completions.
        template: Parses them.
        metadata: What every line's `teacher` object starts with (model,
            task, prompt version, sampling settings).
        budget: Completion tokens each request was allowed.
        keep_reasoning: Keep the reasoning in `teacher.reasoning`.
    """
    thoughts, answers = [], []
    for text, field in itertools.zip_longest(generation.texts, generation.reasonings):
        thought, answer = split_reasoning(text or "")
        thoughts.append(join_reasoning(field, thought))
        answers.append(answer)
    teacher = {**metadata, "request": generation.request, "completions": answers,
               "finish_reasons": list(generation.finish_reasons), "status": "ok",
               "error": None, "cause": None, "agreement": 0.0, "usage": generation.usage,
               "attempts": generation.attempts}
    if keep_reasoning:
        teacher["reasoning"] = thoughts
    line = {"id": record.id, "input": record.input, "label": record.label,
            "rationale": None, "llm_label": None, "teacher": teacher}
    if over_budget(generation, budget, answers):
        cap = budget * STORED_CHARACTERS_PER_TOKEN
        teacher.update(status="over_budget", completions=[a[:cap] for a in answers],
                       completion_chars=[len(a) for a in answers],
                       error=f"the completion is longer than the budget of {budget} tokens",
                       cause="completion over the token budget")
        return line
    parsed = [template.parse(cut_at_stop(a, template.stop), record.input) for a in answers]
    kept, teacher["agreement"] = majority_vote([p.label for p in parsed], template.metric)
    if kept is None:
        first = parsed[0] if parsed else None
        reason = first.error if first else "no completion"
        finish = generation.finish_reasons[0] if generation.finish_reasons else None
        teacher.update(status="parse_error", error=reason,
                       cause=failure_cause(reason, finish, answers[0] if answers else ""))
    else:
        line.update(rationale=parsed[kept].rationale, llm_label=parsed[kept].label)
    return line
