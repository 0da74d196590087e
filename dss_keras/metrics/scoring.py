"""Accuracy of predicted labels: text exact match and equation value.

Two ways to score a label, chosen by the benchmark (or named directly,
`"exact_match"` and `"equation"`, for other data):

- `cqa`, `esnli`, `anli1`: **exact match** after `normalize_text` (Unicode
  NFKC, case folded, runs of whitespace collapsed to one space, leading and
  trailing whitespace removed). Punctuation and articles are kept: `"a bowl"`
  and `"bowl"` are different answers.
- `svamp`: **equation value**. A prediction such as `(84 / 2)` is right when
  its value equals the value of the reference `( 84.0 / 2.0 )`. Values come
  from `evaluate_arithmetic`, a small evaluator built on `ast` that accepts
  numbers, `+ - * /`, parentheses and unary minus and nothing else. Text is
  never executed.

A prediction that cannot be scored (`None`, or an equation without a value)
counts as wrong *and* is counted in `Score.num_unparsable`, so that parse
failures stay visible instead of hiding among wrong answers.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import operator
import unicodedata
import warnings
from typing import Sequence

from dss_keras.config import BENCHMARKS as _BENCHMARK_NAMES

# Limits of `evaluate_arithmetic`: longer text, larger numbers or larger
# intermediate results give no value.
MAX_EXPRESSION_LENGTH = 256
MAX_MAGNITUDE = 1e15
# Two values are equal when they agree to this relative (or absolute) tolerance.
REL_TOL = 1e-6
ABS_TOL = 1e-9

# Benchmark names, and the metric names for other data.
EQUATION_BENCHMARKS = ("equation", "svamp")
EXACT_MATCH_BENCHMARKS = ("exact_match",) + tuple(
    name for name in _BENCHMARK_NAMES if name not in EQUATION_BENCHMARKS)
BENCHMARKS = EXACT_MATCH_BENCHMARKS + EQUATION_BENCHMARKS

# Text with any other character has no value, before it is even parsed.
_ARITHMETIC_CHARACTERS = frozenset("0123456789.eE+-*/() \t\n")
_BINARY_OPERATORS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def normalize_text(text: str) -> str:
    """Normalises a label for exact match: NFKC, case folded, whitespace collapsed.

    Examples:

    >>> normalize_text("  Math\\tPROBLEM \\n")
    'math problem'
    >>> normalize_text("ｅｎｔａｉｌｍｅｎｔ")  # full-width letters
    'entailment'
    """
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def exact_match(prediction: str | None, reference: str) -> bool:
    """Whether `prediction` equals `reference` after `normalize_text`.

    Examples:

    >>> exact_match("Neutral ", "neutral")
    True
    >>> exact_match("a bowl", "bowl")
    False
    >>> exact_match(None, "bowl")
    False
    """
    if not isinstance(prediction, str):
        return False
    return normalize_text(prediction) == normalize_text(reference)


class _NoValue(Exception):
    """The expression is not plain arithmetic, or its value is out of range."""


def _checked(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _NoValue
    value = float(value)
    if not math.isfinite(value) or abs(value) > MAX_MAGNITUDE:
        raise _NoValue
    return value


def _value(node: ast.AST) -> float:
    if isinstance(node, ast.Constant):
        return _checked(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_value(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY_OPERATORS:
        left, right = _value(node.left), _value(node.right)
        if isinstance(node.op, ast.Div) and right == 0:
            raise _NoValue
        return _checked(_BINARY_OPERATORS[type(node.op)](left, right))
    raise _NoValue


def evaluate_arithmetic(expression: str) -> float | None:
    """The value of an arithmetic expression, or `None` when it has none.

    Accepts numbers, `+ - * /`, parentheses and unary minus. Anything else
    (any character outside digits, `.eE+-*/()` and whitespace; calls, `**`,
    `//`, unary plus, ...), division by
    zero, text longer than `MAX_EXPRESSION_LENGTH` characters, and numbers or
    intermediate results larger than `MAX_MAGNITUDE` give `None`. The text is
    parsed with `ast`, never executed, and the function never raises.

    Args:
        expression: Text such as `"( 84.0 / 2.0 )"`.

    Returns:
        The value as a float, or `None`.

    Examples:

    >>> evaluate_arithmetic("( 84.0 / 2.0 )")
    42.0
    >>> evaluate_arithmetic("(12 - (-3)) * 2")
    30.0
    >>> evaluate_arithmetic("1 / 0") is None
    True
    >>> evaluate_arithmetic("9**9**9") is None  # `**` is not arithmetic here
    True
    >>> evaluate_arithmetic("__import__('os')") is None
    True
    """
    if not isinstance(expression, str) or len(expression) > MAX_EXPRESSION_LENGTH:
        return None
    if not _ARITHMETIC_CHARACTERS.issuperset(expression):
        return None
    try:
        with warnings.catch_warnings():
            # e.g. "(2)(3)": "'int' object is not callable; perhaps you missed a comma?"
            warnings.simplefilter("ignore", SyntaxWarning)
            tree = ast.parse(expression.strip(), mode="eval")
        return _value(tree.body)
    except (_NoValue, SyntaxError, ValueError, TypeError, RecursionError, MemoryError):
        return None


def values_equal(a: float, b: float) -> bool:
    """Whether two equation values agree to `REL_TOL` (or `ABS_TOL` near 0)."""
    return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def equation_match(prediction: str | None, reference: str) -> bool | None:
    """Whether two equations have the same value.

    Returns:
        `True` or `False`, or `None` when the prediction has no value (it then
        counts as wrong and as unparsable).

    Raises:
        ValueError: when the *reference* has no value: a gold label must be a
            valid equation.

    Examples:

    >>> equation_match("(84 / 2)", "( 84.0 / 2.0 )")
    True
    >>> equation_match("(84 * 2)", "( 84.0 / 2.0 )")
    False
    >>> equation_match("(some - 5)", "( 84.0 / 2.0 )") is None
    True
    """
    expected = evaluate_arithmetic(reference)
    if expected is None:
        raise ValueError(
            f"The reference equation has no value. Received: reference={reference!r}"
        )
    value = evaluate_arithmetic(prediction) if isinstance(prediction, str) else None
    if value is None:
        return None
    return values_equal(value, expected)


@dataclasses.dataclass(frozen=True)
class Score:
    """The result of `score_predictions`.

    Attributes:
        accuracy: `num_correct / num_examples` (0.0 when there are none).
        num_correct: Predictions that match their reference.
        num_examples: Predictions scored.
        num_unparsable: Predictions that could not be scored at all (`None`,
            or an equation without a value); they count as wrong.
    """

    accuracy: float
    num_correct: int
    num_examples: int
    num_unparsable: int


def check_benchmark(benchmark: str) -> None:
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"Unknown benchmark; expected one of {', '.join(BENCHMARKS)}. "
            f"Received: benchmark={benchmark!r}"
        )


def score_predictions(
    benchmark: str,
    predictions: Sequence[str | None],
    references: Sequence[str],
) -> Score:
    """Scores predicted labels against references with the benchmark's metric.

    Args:
        benchmark: `"cqa"`, `"esnli"` or `"anli1"` (exact match) or `"svamp"`
            (equation value); or the metric itself, `"exact_match"` or
            `"equation"`, for other data.
        predictions: Predicted labels; `None` for a missing prediction.
        references: Gold labels, as many as predictions.

    Returns:
        A `Score` with the accuracy and the number of unparsable predictions.

    Examples:

    >>> score_predictions("svamp", ["(84 / 2)", "(7 + x)", None],
    ...                   ["( 84.0 / 2.0 )", "( 7.0 + 1.0 )", "( 1.0 + 1.0 )"])
    Score(accuracy=0.3333333333333333, num_correct=1, num_examples=3, num_unparsable=2)
    >>> score_predictions("cqa", ["Bowl", "lake"], ["bowl", "pond"]).accuracy
    0.5
    """
    check_benchmark(benchmark)
    if len(predictions) != len(references):
        raise ValueError(
            "`predictions` and `references` must have the same length. "
            f"Received: len(predictions)={len(predictions)}, "
            f"len(references)={len(references)}"
        )
    num_correct = num_unparsable = 0
    for prediction, reference in zip(predictions, references):
        if benchmark in EQUATION_BENCHMARKS:
            match = equation_match(prediction, reference)
        else:
            match = None if prediction is None else exact_match(prediction, reference)
        num_unparsable += match is None
        num_correct += bool(match)
    total = len(references)
    return Score(
        accuracy=num_correct / total if total else 0.0,
        num_correct=num_correct,
        num_examples=total,
        num_unparsable=num_unparsable,
    )
