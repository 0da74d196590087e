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

Built-in templates: `cqa`, `svamp`, `esnli`, `anli1`, with demonstrations
written for this package (`dss_keras/teacher/demonstrations/*.jsonl`). A
custom task gives its own demonstrations, instruction and answer format (see
`custom_template` and `ANSWER_KINDS`); a built-in task takes other
demonstrations or another instruction too (`get_template`). Every template
has a `version`, stored with each teacher output: `<task>-<digest>` of what
it shows the teacher (`PromptTemplate.digest`), so that changing a
demonstration changes the version. Outputs written under the older names
(`cqa-v1`) resume while the prompt is the same (`PromptTemplate.aliases`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from importlib import resources
from typing import Sequence

from dss_keras.config import BENCHMARKS
from dss_keras.data.teacher_outputs import (
    AnswerFormat,
    ParsedOutput,
    choices_of,
    get_answer_format,
    parse_teacher_output,
)

TASKS = BENCHMARKS
"""Tasks with a built-in template: the paper's benchmarks."""
# Custom answer formats: a comma-separated closed label set, or one of these.
ANSWER_KINDS = ("letters", "number", "text")
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


_BUILTIN = {
    # name: (instruction, answer_style, input_style, separator, end, metric)
    "cqa": ("Answer the multiple-choice question. Explain the reasoning, then give the answer.",
            "choice", "question", " ", ".", "cqa"),
    "svamp": ("Solve the math word problem. Explain the reasoning, then give the answer as an "
              "equation in parentheses.", "plain", "question", " ", ".", "svamp"),
    "esnli": ("Does the premise entail the hypothesis, contradict it, or neither? Explain, then "
              "answer entailment, neutral or contradiction.", "plain", "nli", "\n", "", "esnli"),
    "anli1": ("Does the premise entail the hypothesis, contradict it, or neither? Explain, then "
              "answer entailment, neutral or contradiction.", "plain", "nli", " ", ".", "anli1"),
}
# Before versions were digests, each built-in prompt was `<task>-v1`; these were their
# digests, so that outputs written under the old name resume while the prompt is the same.
_V1_DIGESTS = {"cqa": "9dde70fee59b", "svamp": "28c13f92085b", "esnli": "3ba51f527b4e",
               "anli1": "06e83ec48363"}


def read_demonstrations(path: str | os.PathLike) -> tuple[Demonstration, ...]:
    """Reads a JSONL file of `{"input", "rationale", "label"}` objects.

    Raises:
        RecordError: naming the file, line and field of a bad demonstration.
    """
    from dss_keras.data.records import RecordError, iter_json_lines

    path = os.fspath(path)
    demonstrations = []
    for line, data in iter_json_lines(path):
        if not isinstance(data, dict):
            raise RecordError(path, line, None, "expected a JSON object")
        for field in ("input", "rationale", "label"):
            if not isinstance(data.get(field), str) or not data[field].strip():
                raise RecordError(path, line, field, "expected a non-empty string")
        demonstrations.append(Demonstration(data["input"], data["rationale"], data["label"]))
    if not demonstrations:
        raise ValueError(f"No demonstrations in {path}.")
    return tuple(demonstrations)


def get_template(
    name: str,
    demonstrations: Sequence[Demonstration] | str | os.PathLike | None = None,
    instruction: str | None = None,
) -> PromptTemplate:
    """The built-in template of a benchmark: `cqa`, `svamp`, `esnli` or `anli1`.

    Args:
        name: The benchmark.
        demonstrations: Your own demonstrations (`Demonstration`s or a JSONL
            file) instead of the built-in ones; they must parse back to their
            labels with the task's answer format.
        instruction: Your own first line instead of the built-in one.

    The version is `<name>-<digest of what the teacher is shown>`, so that
    other demonstrations or another instruction make another version.

    Examples:

    >>> template = get_template("cqa")
    >>> template.version, template.aliases, len(template.demonstrations)
    ('cqa-9dde70fee59b', ('cqa-v1',), 10)
    >>> get_template("cqa", instruction="Pick one.").version == template.version
    False
    """
    if name not in _BUILTIN:
        raise ValueError(f"No built-in template; known: {', '.join(TASKS)}. "
                         f"Received: name={name!r}")
    default_instruction, answer_style, input_style, separator, end, metric = _BUILTIN[name]
    if demonstrations is None:
        with resources.as_file(
                resources.files(__package__) / "demonstrations" / f"{name}.jsonl") as p:
            demonstrations = read_demonstrations(p)
    elif not isinstance(demonstrations, (list, tuple)):
        demonstrations = read_demonstrations(demonstrations)
    template = PromptTemplate(
        name=name, version="", demonstrations=tuple(demonstrations),
        instruction=default_instruction if instruction is None else instruction,
        answer_format=get_answer_format(name), answer_style=answer_style,
        input_style=input_style, answer_separator=separator, answer_end=end, metric=metric)
    digest = template.digest()
    aliases = (f"{name}-v1",) if digest == _V1_DIGESTS[name] else ()
    template = dataclasses.replace(template, version=f"{name}-{digest}", aliases=aliases)
    template.check()
    return template


def resolve_template(
    task: "str | PromptTemplate",
    demonstrations: Sequence[Demonstration] | str | os.PathLike | None = None,
    answer_format: str | None = None,
    instruction: str | None = None,
    prompt_version: str | None = None,
) -> PromptTemplate:
    """The template of a task name and its overrides (`dss-keras extract`'s flags).

    A built-in task takes other demonstrations and another instruction (a new
    version) but not another answer format: that is a custom task.

    Examples:

    >>> resolve_template("svamp", prompt_version="mine").version
    'mine'
    >>> resolve_template("svamp", answer_format="number")
    Traceback (most recent call last):
    ...
    ValueError: An answer format is for `task="custom"`; svamp reads its own answers. Received: answer_format='number'
    """
    if isinstance(task, PromptTemplate):
        return task
    if task == "custom":
        if demonstrations is None or answer_format is None:
            raise ValueError("A custom task needs `demonstrations` and `answer_format`.")
        return custom_template(demonstrations, answer_format, instruction or "", prompt_version)
    if answer_format is not None:
        raise ValueError(f"An answer format is for `task=\"custom\"`; {task} reads its own "
                         f"answers. Received: answer_format={answer_format!r}")
    template = get_template(task, demonstrations, instruction)
    if prompt_version is not None:
        template = dataclasses.replace(template, version=prompt_version, aliases=())
    return template


def _letters(spec: str) -> tuple[str, ...]:
    spec = spec.strip().lower() or "a-e"
    if re.fullmatch(r"[a-z]-[a-z]", spec):
        return tuple(chr(c) for c in range(ord(spec[0]), ord(spec[2]) + 1))
    if re.fullmatch(r"[a-z]+", spec):
        return tuple(spec)
    raise ValueError(f"Letters are a range like `a-e` or a list like `abcd`. Received: {spec!r}")


def custom_answer_format(spec: str) -> tuple[AnswerFormat, str, str]:
    """The `AnswerFormat`, answer style and metric of a custom answer format.

    Args:
        spec: A closed label set, comma-separated (`entailment,neutral,contradiction`);
            `letters` (`(a)` to `(e)`; `letters:a-d` or `letters:abcd` for others; the
            label is the letter); `number` (an integer or decimal); or `text` (any
            answer on the marker's line).

    Examples:

    >>> fmt, style, metric = custom_answer_format("yes,no")
    >>> parse_teacher_output("It rains. So the answer is maybe.", fmt).error
    "label 'maybe' is not one of yes, no"
    >>> custom_answer_format("number")[0].answer
    '\\\\$?(?P<label>[-+]?\\\\d+(?:\\\\.\\\\d+)?)\\\\s*\\\\.?'
    """
    marker, stop = "So the answer is", "Q:"
    kind, _, arg = spec.strip().partition(":")
    if kind == "letters":
        letters = _letters(arg)
        fmt = AnswerFormat(stop, marker, r"\((?P<label>[a-zA-Z])\)(?:\s+.*?)?\s*\.?", letters,
                           choice_label="letter")
        return fmt, "letter", "exact_match"
    if kind == "number":
        return AnswerFormat(stop, marker, r"\$?(?P<label>[-+]?\d+(?:\.\d+)?)\s*\.?"), \
            "plain", "equation"
    if kind == "text":
        return AnswerFormat(stop, marker, r"(?P<label>.+?)\s*\.?"), "plain", "exact_match"
    labels = tuple(label.strip() for label in spec.split(",") if label.strip())
    if len(labels) < 2:
        raise ValueError(
            "An answer format is a comma-separated label set (at least two labels) or one of "
            f"{', '.join(ANSWER_KINDS)}. Received: answer_format={spec!r}")
    return AnswerFormat(stop, marker, r"(?P<label>.+?)\s*\.?", labels), "plain", "exact_match"


def custom_template(
    demonstrations: Sequence[Demonstration] | str | os.PathLike,
    answer_format: str,
    instruction: str = "",
    version: str | None = None,
) -> PromptTemplate:
    """A template for your own task.

    Args:
        demonstrations: `Demonstration`s, or a JSONL file of them.
        answer_format: See `custom_answer_format`.
        instruction: The first line of the prompt.
        version: The prompt version; by default `custom-<digest>` of what the
            teacher is shown (`PromptTemplate.digest`).

    Examples:

    >>> demos = [Demonstration("Is ice cold?", "Ice is frozen water.", "yes"),
    ...          Demonstration("Is fire cold?", "Fire burns.", "no")]
    >>> template = custom_template(demos, "yes,no", "Answer yes or no.")
    >>> print(template.prompt("Is snow cold?").text)
    Answer yes or no.
    <BLANKLINE>
    Q: Is ice cold?
    A: Ice is frozen water. So the answer is yes.
    <BLANKLINE>
    Q: Is fire cold?
    A: Fire burns. So the answer is no.
    <BLANKLINE>
    Q: Is snow cold?
    A:
    >>> template.version.startswith("custom-")
    True
    """
    if not isinstance(demonstrations, (list, tuple)):
        demonstrations = read_demonstrations(demonstrations)
    fmt, answer_style, metric = custom_answer_format(answer_format)
    demonstrations = tuple(demonstrations)
    template = PromptTemplate(
        name="custom", version=version or "", instruction=instruction,
        demonstrations=demonstrations, answer_format=fmt, answer_style=answer_style,
        metric=metric)
    if version is None:
        # Custom versions used to digest the settings rather than the text shown.
        settings = json.dumps([instruction, answer_format,
                               [dataclasses.astuple(d) for d in demonstrations]])
        older = "custom-" + hashlib.sha256(settings.encode()).hexdigest()[:12]
        template = dataclasses.replace(template, version=f"custom-{template.digest()}",
                                       aliases=(older,))
    template.check()
    return template
