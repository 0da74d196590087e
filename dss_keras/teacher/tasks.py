"""The tasks a teacher can be asked: the paper's four benchmarks, and your own.

- `get_template(name)`: a built-in task (`cqa`, `svamp`, `esnli`, `anli1`)
  with ten demonstrations written for this package
  (`dss_keras/teacher/demonstrations/*.jsonl`), or with your own
  demonstrations or instruction instead (a new version).
- `custom_template(demonstrations, answer_format, instruction)`: your own
  task; `custom_answer_format` reads its answer format (`ANSWER_KINDS`, or a
  closed label set).
- `resolve_template`: the template of `dss-keras extract`'s flags.

A template's version is `<task>-<digest of what the teacher is shown>`
(`PromptTemplate.digest`). Built-in prompts were `<task>-v1` before versions
were digests; while a built-in prompt is what it was, that name is its alias
and outputs written under it resume.
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
from dss_keras.data.teacher_outputs import AnswerFormat, get_answer_format, parse_teacher_output
from dss_keras.teacher.prompts import Demonstration, PromptTemplate

TASKS = BENCHMARKS
"""Tasks with a built-in template: the paper's benchmarks."""
# Custom answer formats: a comma-separated closed label set, or one of these.
ANSWER_KINDS = ("letters", "number", "text")

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
                resources.files("dss_keras.teacher") / "demonstrations" / f"{name}.jsonl") as p:
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
