"""Checks of the fast path's whole-number options (no TensorFlow: any backend validates them).

`DistillStepByStep` takes `examples_per_row` and `pad_to_multiple_of` on every
backend, so that a model's config is the same wherever it was built; only the
TensorFlow fast path uses them (`packing`).

Examples:

>>> check_examples_per_row(4)
4
>>> check_length_multiple(0, "pad_to_multiple_of")
Traceback (most recent call last):
...
ValueError: `pad_to_multiple_of` must be a whole number, at least 1. Received: pad_to_multiple_of=0
"""

from __future__ import annotations

import operator


def check_examples_per_row(examples_per_row) -> int:
    """`examples_per_row` as an `int` if it is a whole number, at least 1; else a `ValueError`.

    Any integer type passes (a NumPy integer from a config or a tuner too);
    floats, strings and booleans do not.
    """
    return _whole_number_at_least_1(examples_per_row, "examples_per_row")


def check_length_multiple(length_multiple, name: str = "length_multiple") -> int:
    """`length_multiple` as an `int` if it is a whole number, at least 1; else a `ValueError`.

    `name` is the argument's name in the error message.
    """
    return _whole_number_at_least_1(length_multiple, name)


def _whole_number_at_least_1(value, name: str) -> int:
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < 1:
        raise ValueError(f"`{name}` must be a whole number, at least 1. "
                         f"Received: {name}={value!r}")
    return number
