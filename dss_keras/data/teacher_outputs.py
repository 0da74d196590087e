"""Rationale and label from a raw few-shot chain-of-thought completion.

A teacher completion holds the rationale, an answer marker, the answer, and
then usually runs on into the next few-shot example:

```
The answer must be ... So the answer is (d) math problem.\\n\\nQ: ...     cqa
... 84 / 2 = 42. The answer is (84 / 2).\\n\\nQ: ...                      svamp
The person is outdoors.\\nAnswer: entailment\\n\\nPremise: ...            esnli
The premise mentions ... So the answer is neutral.\\n\\nPremise: ...      anli1
```

One parser, `parse_teacher_output`, reads them all, driven by a per-benchmark
`AnswerFormat`:

1. Cut the text at the next few-shot example: the first `stop` marker (`Q:`
   or `Premise:`) that starts the text or follows whitespace. Markdown bold
   (`**`) is dropped, as chat models write it around markers and answers.
2. Find the answer marker, in any letter case and spacing (`so the answer
   is`, `So the Answer is`; a marker that does not start with "So" also
   takes a "So" before it); it must occur exactly once. The rationale is the
   text before it, stripped, and must not be empty.
3. The answer is the first line of text after the marker, stripped of a
   leading colon and of `*`, `_` or backticks around it (a completion cut
   mid-word after the answer line, e.g. `Answer: neutral\\n\\nPrem`, still
   parses). It must match the format's `answer` pattern as a whole; the
   pattern's `label` group is the label; it must hold a letter or a digit,
   and its parentheses must balance (an unbalanced label is a completion cut
   inside its answer).
4. When the format lists `labels`, the label must be one of them (compared
   case-insensitively; the listed spelling is returned).
5. Multiple choice (`choice_label`), when the input's choices are given
   (`choices_of`): a letter alone (`(b)`, `b`) stands for its choice; the
   choice text alone is accepted; a letter whose text is another choice's,
   or no choice at all, is a failure ("letter and text disagree"), never
   a guess.

What the formats accept, and where they differ from the reference code:

- cqa: `(x) answer text`, exactly one choice letter `(a)`-`(e)`, final
  period dropped. Hedged answers such as `either (c) lake or (d) pond.` name
  two choices and are failures (the reference kept the garbled `lake or`).
- svamp: the whole parenthesised equation up to the final period, outer
  parentheses kept: `The answer is (84 / 2).` gives `(84 / 2)`, the layout of
  the gold labels `( 84.0 / 2.0 )`; `(5 * 3) / 2.` gives `(5 * 3) / 2` (the
  reference's regex kept only `(5 * 3)`). An equation with words in it, like
  `(some - 5)`, parses: whether it has a value is for `dss_keras.metrics`.
- esnli: the label is the line after `Answer:`, one of the three NLI labels.
- anli1: the label after `So the answer is`, final period dropped, one of the
  three NLI labels.

A completion that does not parse gives `(None, None)` and its index and the
reason are recorded; nothing raises and alignment with the inputs is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
from typing import Mapping, Sequence

NLI_LABELS = ("entailment", "neutral", "contradiction")


@dataclasses.dataclass(frozen=True)
class AnswerFormat:
    """How a benchmark's teacher completions end.

    Args:
        stop: Marker of the next few-shot example, e.g. `"Q:"`; the
            completion is cut at its first occurrence that starts the text or
            follows whitespace.
        marker: The text before the answer, e.g. `"So the answer is"`.
        answer: A regular expression the whole answer (the rest of the
            marker's line, stripped) must match, with a group named `label`.
        labels: When not empty, the only labels accepted (case-insensitive).
        choice_label: For multiple choice, what the label is: `"text"` (the
            choice's text, as in cqa) or `"letter"`; `""` otherwise.

    Examples:

    >>> fmt = AnswerFormat(stop="Q:", marker="Answer:", answer=r"(?P<label>\\w+)")
    >>> parse_teacher_output("Birds fly.\\nAnswer: yes\\n\\nQ: next", fmt).label
    'yes'
    """

    stop: str
    marker: str
    answer: str
    labels: tuple[str, ...] = ()
    choice_label: str = ""

    def __post_init__(self):
        for field in ("stop", "marker"):
            if not getattr(self, field):
                raise ValueError(f"`{field}` must not be empty. Received: {field}=''")
        if "label" not in re.compile(self.answer).groupindex:
            raise ValueError(
                "`answer` must have a group named `label`, e.g. '(?P<label>.+)'. "
                f"Received: answer={self.answer!r}"
            )


ANSWER_FORMATS: Mapping[str, AnswerFormat] = {
    "cqa": AnswerFormat(
        stop="Q:",
        marker="So the answer is",
        # One letter, then text that names no second letter, then an optional
        # final period.
        answer=r"\([a-eA-E]\)\s*(?P<label>(?:(?!\([a-eA-E]\)).)+?)\s*\.?",
        choice_label="text",
    ),
    "svamp": AnswerFormat(
        stop="Q:",
        marker="The answer is",
        answer=r"(?P<label>\(.*?)\s*\.?",
    ),
    "esnli": AnswerFormat(
        stop="Premise:",
        marker="Answer:",
        answer=r"(?P<label>.+?)\s*\.?",
        labels=NLI_LABELS,
    ),
    "anli1": AnswerFormat(
        stop="Premise:",
        marker="So the answer is",
        answer=r"(?P<label>.+?)\s*\.?",
        labels=NLI_LABELS,
    ),
}


def get_answer_format(name: str) -> AnswerFormat:
    """The `AnswerFormat` of a benchmark: `cqa`, `svamp`, `esnli` or `anli1`."""
    if name not in ANSWER_FORMATS:
        raise ValueError(
            f"No answer format for this benchmark; known: {', '.join(ANSWER_FORMATS)}. "
            f"Received: name={name!r}"
        )
    return ANSWER_FORMATS[name]


@dataclasses.dataclass(frozen=True)
class ParsedOutput:
    """One parsed completion: `rationale` and `label`, or `error` and two `None`s."""

    rationale: str | None
    label: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _failure(reason: str) -> ParsedOutput:
    return ParsedOutput(None, None, reason)


def _balanced(text: str) -> bool:
    depth = 0
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def _cut_at_stop(text: str, stop: str) -> str:
    match = re.search(r"(?<!\S)" + re.escape(stop), text)
    return text if match is None else text[: match.start()]


_CHOICE_LINE = re.compile(r"^\(([a-zA-Z])\)\s*(.+?)\s*$", re.MULTILINE)
_WRAPPED = re.compile(r"([*_`]+)(.+?)\1\s*(\.?)")
_LETTER_ONLY = re.compile(r"\(?([a-zA-Z])\)?\s*\.?")
_LETTER_AND_TEXT = re.compile(r"\(([a-zA-Z])\)\s*(.+?)\s*\.?")


def choices_of(text: str) -> dict[str, str]:
    """The `(x) choice` lines of a multiple-choice input, `{letter: choice}`.

    Examples:

    >>> choices_of("Where is milk kept?\\n(a) oven\\n(b) refrigerator")
    {'a': 'oven', 'b': 'refrigerator'}
    """
    return {letter.lower(): choice for letter, choice in _CHOICE_LINE.findall(text)}


def _same_text(a: str, b: str) -> bool:
    def norm(text):
        return " ".join(unicodedata.normalize("NFKC", text).casefold().split()).rstrip(".")
    return norm(a) == norm(b)


@functools.lru_cache(maxsize=64)
def _marker_pattern(marker: str) -> re.Pattern:
    words = marker.split()
    pattern = r"\s+".join(re.escape(word) for word in words)
    if words[0].casefold() != "so":
        pattern = r"(?:\bso,?\s+)?" + pattern
    return re.compile(r"(?<!\w)" + pattern, re.IGNORECASE)


def _choice(answer: str, answer_format: AnswerFormat, choices: Mapping[str, str]):
    """`(label, error)` of a multiple-choice answer, or `None` to read it by the pattern."""
    letter, text = None, None
    if match := _LETTER_ONLY.fullmatch(answer):
        letter = match.group(1).lower()
    elif (match := _LETTER_AND_TEXT.fullmatch(answer)) and not re.search(
            r"\([a-zA-Z]\)", match.group(2)):
        letter, text = match.group(1).lower(), match.group(2)
    else:
        named = [key for key, choice in choices.items() if _same_text(answer, choice)]
        if len(named) != 1:
            return None
        letter = named[0]
    if letter not in choices:
        return None, f"letter ({letter}) is not one of the choices {', '.join(choices)}"
    if text is not None and not _same_text(text, choices[letter]):
        return None, (f"letter and text disagree: ({letter}) is {choices[letter]!r}, "
                      f"the answer says {text!r}")
    return (choices[letter] if answer_format.choice_label == "text" else letter), None


def parse_teacher_output(output, answer_format: AnswerFormat,
                         choices: Mapping[str, str] | None = None) -> ParsedOutput:
    """Parses one raw completion; never raises.

    Args:
        output: The completion text (anything that is not a string fails).
        answer_format: The benchmark's `AnswerFormat`, see `get_answer_format`.
        choices: The input's choices (`choices_of`), for a multiple-choice
            format: a letter alone then names its choice, and a letter and a
            text that disagree are a failure.

    Returns:
        A `ParsedOutput`; on failure its `error` says why.

    Examples:

    >>> cqa = get_answer_format("cqa")
    >>> parse_teacher_output(
    ...     "Only a math problem fits. So the answer is (d) math problem.\\n\\n"
    ...     "Q: next question", cqa)
    ParsedOutput(rationale='Only a math problem fits.', label='math problem', error=None)
    >>> parse_teacher_output("So hard. So the answer is either (b) lake or (d) pond.",
    ...                      cqa).error
    "answer 'either (b) lake or (d) pond.' does not match the format"
    >>> choices = {"a": "oven", "b": "refrigerator"}
    >>> parse_teacher_output("Milk is kept cold. **So the answer is (b).**", cqa, choices).label
    'refrigerator'
    >>> parse_teacher_output("Milk is kept cold. So the answer is (a) refrigerator.", cqa,
    ...                      choices).error
    "letter and text disagree: (a) is 'oven', the answer says 'refrigerator'"
    """
    if not isinstance(output, str):
        return _failure(f"expected a string, received {type(output).__name__}")
    text = _cut_at_stop(output, answer_format.stop).replace("**", "")
    if not text.strip():
        return _failure("empty output")
    markers = list(_marker_pattern(answer_format.marker).finditer(text))
    if len(markers) != 1:
        where = "no" if not markers else f"{len(markers)} times the"
        return _failure(f"{where} answer marker {answer_format.marker!r}")
    rationale, rest = text[:markers[0].start()].strip(), text[markers[0].end():]
    if not rationale:
        return _failure("empty rationale")
    answer = rest.strip().split("\n", 1)[0].strip().lstrip(":").strip()
    if wrapped := _WRAPPED.fullmatch(answer):
        answer = wrapped.group(2).strip() + wrapped.group(3)
    if choices and answer_format.choice_label:
        read = _choice(answer, answer_format, choices)
        if read is not None:
            label, error = read
            return _failure(error) if error else _labelled(rationale, label, answer_format)
    match = re.fullmatch(answer_format.answer, answer)
    label = match.group("label").strip() if match else ""
    if not any(char.isalnum() for char in label):
        return _failure(f"answer {answer!r} does not match the format")
    if not _balanced(label):
        return _failure(f"answer {answer!r} has unbalanced parentheses")
    return _labelled(rationale, label, answer_format)


def _labelled(rationale: str, label: str, answer_format: AnswerFormat) -> ParsedOutput:
    """The parsed output, once the label is checked against a closed label set."""
    if answer_format.labels:
        by_key = {known.casefold(): known for known in answer_format.labels}
        if label.casefold() not in by_key:
            return _failure(
                f"label {label!r} is not one of {', '.join(answer_format.labels)}"
            )
        label = by_key[label.casefold()]
    return ParsedOutput(rationale, label)


@dataclasses.dataclass(frozen=True)
class ParsedOutputs:
    """The parsed completions of a list, aligned with it.

    Attributes:
        rationales: One rationale (or `None`) per completion.
        labels: One label (or `None`) per completion.
        errors: Index of each completion that failed -> the reason.
    """

    rationales: tuple[str | None, ...]
    labels: tuple[str | None, ...]
    errors: Mapping[int, str]

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def pairs(self) -> list[tuple[str | None, str | None]]:
        """`(rationale, label)` per completion."""
        return list(zip(self.rationales, self.labels))

    @property
    def num_failed(self) -> int:
        return len(self.errors)

    @property
    def failed_indices(self) -> list[int]:
        return sorted(self.errors)


def parse_teacher_outputs(
    outputs: Sequence, answer_format: AnswerFormat | str
) -> ParsedOutputs:
    """Parses a list of completions, counting the ones that fail.

    Args:
        outputs: Raw completions, one per example.
        answer_format: An `AnswerFormat` or a benchmark name.

    Returns:
        `ParsedOutputs` aligned with `outputs`.

    Examples:

    >>> parsed = parse_teacher_outputs(
    ...     ["42 / 2 = 21. The answer is (42 / 2).\\n\\nQ: ...", "", None], "svamp")
    >>> parsed.pairs[0]
    ('42 / 2 = 21.', '(42 / 2)')
    >>> parsed.num_failed, parsed.failed_indices
    (2, [1, 2])
    """
    if isinstance(answer_format, str):
        answer_format = get_answer_format(answer_format)
    parsed = [parse_teacher_output(output, answer_format) for output in outputs]
    return ParsedOutputs(
        rationales=tuple(p.rationale for p in parsed),
        labels=tuple(p.label for p in parsed),
        errors={i: p.error for i, p in enumerate(parsed) if not p.ok},
    )
