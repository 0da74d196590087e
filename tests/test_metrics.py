import ast
import builtins
import fractions
import inspect
import math
import os
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dss_keras import metrics
from dss_keras.metrics import (
    MAX_EXPRESSION_LENGTH,
    MAX_MAGNITUDE,
    Score,
    equation_match,
    evaluate_arithmetic,
    exact_match,
    normalize_text,
    score_predictions,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- text exact match ----------------------------------------------------------


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("math problem", "math problem", True),
        ("  Math   Problem\n", "math problem", True),
        ("ＭＡＴＨ problem", "math problem", True),  # NFKC folds full-width letters
        ("Straße", "STRASSE", True),  # casefold, not lower
        ("math problem.", "math problem", False),  # punctuation is kept
        ("the lake", "lake", False),  # articles are kept
        ("", "lake", False),
        (None, "lake", False),
    ],
)
def test_exact_match(prediction, reference, expected):
    assert exact_match(prediction, reference) is expected


def test_normalize_text_is_idempotent():
    text = " Café\tau  LAIT "
    assert normalize_text(normalize_text(text)) == normalize_text(text) == "café au lait"


# --- the arithmetic evaluator --------------------------------------------------


@pytest.mark.parametrize(
    "expression, value",
    [
        ("( 84.0 / 2.0 )", 42.0),
        ("(84 / 2)", 42.0),
        ("( ( 17.0 + 15.0 ) + 2.0 )", 34.0),
        ("(5 * 3) / 2", 7.5),
        ("(12 - (-3))", 15.0),
        ("-(2 - 5)", 3.0),
        ("--4", 4.0),
        ("7", 7.0),
        ("1e3 - 1", 999.0),
        ("  (1 + 1)  ", 2.0),
        ("(" * 100 + "1" + ")" * 100, 1.0),  # deep but short
        ("(2 + 3) * 4 - 6 / 3", 18.0),
    ],
)
def test_evaluate_arithmetic_values(expression, value):
    assert evaluate_arithmetic(expression) == value


HOSTILE = [
    "__import__('os')",
    "__import__('os').system('touch pwned')",
    "open('/etc/passwd').read()",
    "().__class__.__bases__[0].__subclasses__()",
    "9**9**9",
    "2 ** 10",
    "10 ** 100",
    "7 % 3",
    "7 // 2",
    "1 << 100000",
    "1 / 0",
    "5 / (3 - 3)",
    "1 / 0.0",
    "x + 1",
    "(some - 5)",
    "(7x = 14)",
    "(175, 5)",
    "(53 + 17) and (14 - 10)",
    "(11,210 / 84)",
    "[1, 2]",
    "{'a': 1}",
    "lambda: 1",
    "'12' + '3'",
    "True + 1",
    "None",
    "1j * 2",
    "+5",
    "~5",
    "not 1",
    "1 if 1 else 2",
    "1 < 2",
    "f'{1}'",
    "1e400",
    "1e308 * 10",
    "10000000000000000 + 1",
    "999999999 * 999999999",
    "9" * 5000,
    "(" * 300 + "1" + ")" * 300,
    "1 +" * 200 + "1",
    "(2)(3)",
    "1 2",
    "1__0",
    "",
    "   ",
    "(",
    "1 + ",
    "\x00",
    "1\x00 + 2",
    "1;2",
    "1\n2",
    "import os",
    "(1 + 1",
    "٣ + 1",
    "\u00bd + 1",
]


@pytest.mark.parametrize("expression", HOSTILE)
def test_evaluate_arithmetic_gives_no_value(expression):
    assert evaluate_arithmetic(expression) is None


def test_evaluate_arithmetic_rejects_non_strings():
    for value in (None, 3, b"1 + 1", ["1"]):
        assert evaluate_arithmetic(value) is None


def test_module_never_calls_eval_or_exec():
    source = inspect.getsource(metrics)
    assert "eval(" not in source and "exec(" not in source and "compile(" not in source


def test_evaluator_never_executes(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("the evaluator executed code")

    guards = {name: forbidden for name in ("eval", "exec", "__import__", "open")}
    with mock.patch.multiple(builtins, **guards):
        values = [evaluate_arithmetic(text) for text in HOSTILE[:4]]
        plain = evaluate_arithmetic("(1 + 2)")
    assert values == [None] * 4 and plain == 3.0
    assert not os.path.exists(tmp_path / "pwned")


@FAST
@given(st.text(max_size=300))
def test_evaluator_never_raises_on_any_text(text):
    value = evaluate_arithmetic(text)
    assert value is None or (math.isfinite(value) and abs(value) <= MAX_MAGNITUDE)


HOSTILE_PIECES = st.sampled_from(
    ["__import__", "(", ")", "'os'", ".", "system", "**", "9", "1e308", "*", "/", "0",
     "-", "+", ",", "lambda", ":", "[", "]", "x", " ", "\n", "é", "\x00", "%", "~"]
)


@FAST
@given(st.lists(HOSTILE_PIECES, max_size=60).map("".join))
def test_evaluator_never_raises_on_hostile_fragments(text):
    value = evaluate_arithmetic(text)
    if "**" in text or "__import__" in text or "%" in text:
        assert value is None


def _expressions():
    numbers = st.one_of(
        st.integers(min_value=0, max_value=10**6),
        st.decimals(min_value=0, max_value=10**4, places=2, allow_nan=False),
    ).map(lambda n: (str(n), fractions.Fraction(str(n))))

    def extend(children):
        def binary(pair, op):
            (left, lv), (right, rv) = pair
            if lv is None or rv is None:
                value = None
            elif op == "+":
                value = lv + rv
            elif op == "-":
                value = lv - rv
            elif op == "*":
                value = lv * rv
            else:
                value = None if rv == 0 else lv / rv
            return f"({left} {op} {right})", value

        def negate(child):
            text, value = child
            return f"-({text})", None if value is None else -value

        # A divisor is a literal, so that exact and float arithmetic agree on
        # which divisions are by zero.
        return st.one_of(
            st.builds(binary, st.tuples(children, children), st.sampled_from("+-*")),
            st.builds(binary, st.tuples(children, numbers), st.just("/")),
            children.map(negate),
        )

    return st.recursive(numbers, extend, max_leaves=8)


@FAST
@given(_expressions())
def test_evaluator_agrees_with_exact_arithmetic(expression):
    text, exact = expression
    value = evaluate_arithmetic(text)
    if len(text) > MAX_EXPRESSION_LENGTH or exact is None:
        assert value is None
    elif value is not None:
        assert math.isclose(value, float(exact), rel_tol=1e-9, abs_tol=1e-9)
    else:
        # Only an intermediate result beyond the magnitude limit gives no value.
        assert _largest_intermediate(text) > MAX_MAGNITUDE * 0.999


def _largest_intermediate(text):
    largest = 0.0

    def walk(node):
        nonlocal largest
        if isinstance(node, ast.Constant):
            value = fractions.Fraction(str(node.value))
        elif isinstance(node, ast.UnaryOp):
            value = -walk(node.operand)
        else:
            left, right = walk(node.left), walk(node.right)
            value = {
                ast.Add: lambda: left + right,
                ast.Sub: lambda: left - right,
                ast.Mult: lambda: left * right,
                ast.Div: lambda: left / right,
            }[type(node.op)]()
        largest = max(largest, abs(float(value)))
        return value

    walk(ast.parse(text, mode="eval").body)
    return largest


def test_long_expressions_give_no_value():
    text = "+".join(["1"] * (MAX_EXPRESSION_LENGTH // 2 + 1))
    assert len(text) > MAX_EXPRESSION_LENGTH
    assert evaluate_arithmetic(text) is None
    assert evaluate_arithmetic(text[:MAX_EXPRESSION_LENGTH - 1]) is not None


# --- equation match and scoring ------------------------------------------------


def test_equation_match():
    assert equation_match("(84 / 2)", "( 84.0 / 2.0 )") is True
    assert equation_match("(10 / 3) * 3", "( 10.0 )") is True  # float round-off
    assert equation_match("(0.33 * 3)", "( 1.0 )") is False
    assert equation_match("(84 - 2)", "( 84.0 / 2.0 )") is False
    assert equation_match("(84 / x)", "( 84.0 / 2.0 )") is None
    assert equation_match(None, "( 84.0 / 2.0 )") is None
    with pytest.raises(ValueError, match="reference"):
        equation_match("(1 + 1)", "( x + 1 )")


def test_score_predictions_exact_match():
    score = score_predictions(
        "esnli", ["Neutral", "entailment", None, "neutral"],
        ["neutral", "contradiction", "neutral", "neutral"],
    )
    assert score == Score(accuracy=0.5, num_correct=2, num_examples=4, num_unparsable=1)


def test_score_predictions_svamp_counts_unparsable():
    score = score_predictions(
        "svamp",
        ["(84 / 2)", "(2 ** 3)", "__import__('os')", None, "(3 * 3)"],
        ["( 84.0 / 2.0 )", "( 2.0 * 2.0 * 2.0 )", "( 1.0 )", "( 1.0 )", "( 3.0 + 3.0 )"],
    )
    assert (score.num_correct, score.num_examples, score.num_unparsable) == (1, 5, 3)
    assert score.accuracy == pytest.approx(0.2)


def test_score_predictions_checks_its_arguments():
    assert score_predictions("equation", ["(1 + 1)"], ["( 2.0 )"]).num_correct == 1
    assert score_predictions("exact_match", ["A"], ["a"]).num_correct == 1
    with pytest.raises(ValueError, match="benchmark='gsm8k'"):
        score_predictions("gsm8k", [], [])
    with pytest.raises(ValueError, match="same length"):
        score_predictions("cqa", ["a"], [])
    assert score_predictions("cqa", [], []).accuracy == 0.0
