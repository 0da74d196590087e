"""Few-shot chain-of-thought prompts, and the answer formats that read the replies.

A `PromptTemplate` turns one input into a prompt that shows the teacher
about ten worked demonstrations and then the input, and reads the teacher's
completion back with the one parser of `dss_keras.data.teacher_outputs`:

```
<instruction>

Q: <demonstration input>
A: <rationale> So the answer is (c) <label>.

...

Q: <input>
A:
```

NLI tasks show `Premise: ...` and `Hypothesis: ...` instead of `Q: ...` (the
input holds both, joined by `</s>`); e-SNLI ends its demonstrations with a
line `Answer: <label>`. The same template also renders chat messages: the
instruction as the system message, each demonstration as a user turn and an
assistant turn.

The built-in templates (`cqa`, `svamp`, `esnli`, `anli1`) and custom ones
are made in `dss_keras.teacher.tasks`. Every template
has a `version`, stored with each teacher output: `<task>-<digest>` of what
it shows the teacher (`PromptTemplate.digest`), so that changing a
demonstration changes the version. Outputs written under the older names
(`cqa-v1`) resume while the prompt is the same (`PromptTemplate.aliases`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

from dss_keras.data.teacher_outputs import (
    AnswerFormat,
    ParsedOutput,
    choices_of,
    parse_teacher_output,
)

_NLI_SPLIT = re.compile(r"\s*</s>\s*")


@dataclasses.dataclass(frozen=True)
class Demonstration:
    """One worked example shown to the teacher."""

    input: str
    rationale: str
    label: str


@dataclasses.dataclass(frozen=True)
class Prompt:
    """One prompt, for a completions route (`text`) and a chat route (`messages`)."""

    text: str
    messages: tuple[dict, ...]


@dataclasses.dataclass(frozen=True)
class PromptTemplate:
    """How a task asks the teacher and reads its answers.

    Args:
        name: The task, e.g. `"cqa"` or `"custom"`.
        version: Stored with every output; a different version on the same
            output file is refused.
        instruction: The first line(s) of the prompt.
        demonstrations: The worked examples.
        answer_format: Parses the completions (`parse_teacher_output`).
        answer_style: How a label is written after the marker: `"choice"`
            (`(c) the choice text`, the letter looked up in the input's
            `(x) ...` lines), `"letter"` (`(c)`) or `"plain"`.
        input_style: `"question"` (`Q: <input>`) or `"nli"` (`Premise:` and
            `Hypothesis:` lines from an input `premise </s> hypothesis`).
        answer_separator: Between the rationale and the marker.
        answer_end: After the answer.
        metric: How labels are scored against gold labels
            (`dss_keras.metrics.score_predictions`).
        aliases: Older names of the same prompt: outputs written under them
            resume.

    Examples:

    >>> from dss_keras.teacher.tasks import get_template
    >>> template = get_template("svamp")
    >>> prompt = template.prompt("Ann has 3 pens and buys 4 more.\\nHow many pens?")
    >>> prompt.text.endswith("Q: Ann has 3 pens and buys 4 more.\\nHow many pens?\\nA:")
    True
    >>> template.parse(" 3 + 4 = 7. The answer is (3 + 4).\\n\\nQ: next").label
    '(3 + 4)'
    """

    name: str
    version: str
    instruction: str
    demonstrations: tuple[Demonstration, ...]
    answer_format: AnswerFormat
    answer_style: str = "plain"
    input_style: str = "question"
    answer_separator: str = " "
    answer_end: str = "."
    metric: str = "exact_match"
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.answer_style not in ("choice", "letter", "plain"):
            raise ValueError(f"Unknown answer_style. Received: answer_style={self.answer_style!r}")
        if self.input_style not in ("question", "nli"):
            raise ValueError(f"Unknown input_style. Received: input_style={self.input_style!r}")

    @property
    def stop(self) -> list[str]:
        """Stop sequences: the start of the next example."""
        return ["\n" + self.answer_format.stop]

    def render_input(self, text: str) -> str:
        """The question block of one input; raises `ValueError` when it cannot be shown."""
        if self.input_style == "question":
            return f"Q: {text}"
        parts = _NLI_SPLIT.split(text.strip())
        if len(parts) != 2:
            raise ValueError(
                "An NLI input must be `premise </s> hypothesis`. "
                f"Received: input={text[:80]!r}"
            )
        return f"Premise: {parts[0]}\nHypothesis: {parts[1]}"

    def render_answer(self, demonstration: Demonstration) -> str:
        """The rationale and answer of a demonstration, as the teacher should write them."""
        label = demonstration.label
        if self.answer_style == "letter":
            label = f"({label})"
        elif self.answer_style == "choice":
            letters = {c.casefold(): l for l, c in choices_of(demonstration.input).items()}
            if label.casefold() not in letters:
                raise ValueError(
                    "A demonstration's label must be one of its `(x) choice` lines. "
                    f"Received: label={label!r}"
                )
            label = f"({letters[label.casefold()]}) {label}"
        return (f"{demonstration.rationale}{self.answer_separator}"
                f"{self.answer_format.marker} {label}{self.answer_end}")

    @property
    def versions(self) -> tuple[str, ...]:
        """The version, then its aliases: the names an output may carry to resume."""
        return (self.version, *self.aliases)

    def shown(self) -> str:
        """What the teacher is shown before every input: the instruction and the demonstrations."""
        blocks = [self.instruction] if self.instruction else []
        blocks += [f"{self.render_input(d.input)}\nA: {self.render_answer(d)}"
                   for d in self.demonstrations]
        return "\n\n".join(blocks)

    def digest(self) -> str:
        """12 hex digits of SHA-256 of `shown()`: what versions a prompt.

        Examples:

        >>> from dss_keras.teacher.tasks import get_template
        >>> get_template("svamp").digest() == get_template("svamp").version[-12:]
        True
        """
        return hashlib.sha256(self.shown().encode("utf-8")).hexdigest()[:12]

    def prompt(self, text: str) -> Prompt:
        """The few-shot prompt of one input."""
        messages = [{"role": "system", "content": self.instruction}] if self.instruction else []
        for demo in self.demonstrations:
            messages += [{"role": "user", "content": self.render_input(demo.input)},
                         {"role": "assistant", "content": self.render_answer(demo)}]
        question = self.render_input(text)
        messages.append({"role": "user", "content": question})
        shown = self.shown()
        return Prompt(f"{shown}\n\n{question}\nA:" if shown else f"{question}\nA:",
                      tuple(messages))

    def parse(self, completion, input: str | None = None) -> ParsedOutput:
        """Parses a completion (a leading `A:`, as chat models may write, is dropped).

        With the `input`, a multiple-choice answer is checked against the
        input's choices (a letter alone names its choice).
        """
        if isinstance(completion, str):
            completion = re.sub(r"^\s*A:", "", completion)
        choices = choices_of(input) if input and self.answer_format.choice_label else None
        return parse_teacher_output(completion, self.answer_format, choices)

    def check(self) -> None:
        """Raises `ValueError` unless every demonstration parses back to its own label."""
        for i, demo in enumerate(self.demonstrations):
            self.render_input(demo.input)
            parsed = self.parse(self.render_answer(demo))
            if parsed.label is None or parsed.label.casefold() != demo.label.casefold():
                raise ValueError(
                    f"Demonstration {i} does not parse back to its label "
                    f"({parsed.error or parsed.label!r}). Received: label={demo.label!r}"
                )
