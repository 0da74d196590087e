"""Deterministic subsets of records: training fractions and validation splits.

Both functions rank the records by a hash of `(purpose, seed, record id)` and
take the lowest-ranked ones, then return them in their input order. So:

- the same records, fraction and seed always give the same subset, on any
  machine and Python version (SHA-256, not Python's salted `hash`);
- the subset does not depend on the order of the input records;
- smaller fractions are **nested** in larger ones for the same seed: the 10%
  subset is part of the 25% subset, which is part of the 50% subset, so a
  curve over fractions adds data instead of swapping it;
- `take_fraction` and `split_validation` rank with different purposes, so a
  training fraction with seed 0 is not correlated with the validation split.

Record ids must be unique (readers check this).
"""

from __future__ import annotations

import hashlib
import math
from typing import Sequence

from dss_keras.data.records import Record

VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0


def _rank(records: Sequence[Record], purpose: str, seed: int) -> list[int]:
    def key(index: int) -> bytes:
        text = f"{purpose}\0{seed}\0{records[index].id}"
        return hashlib.sha256(text.encode("utf-8")).digest()

    return sorted(range(len(records)), key=key)


def _count(fraction: float, total: int) -> int:
    """`fraction * total` rounded half up; at least one when both are positive."""
    count = math.floor(fraction * total + 0.5)
    return min(total, max(count, 1 if total and fraction > 0 else 0))


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"`{name}` must be an integer. Received: {name}={value!r}")


def take_fraction(
    records: Sequence[Record], fraction: float, *, seed: int = 0
) -> list[Record]:
    """A deterministic `fraction` of `records`, nested across fractions.

    Takes `round(fraction * len(records))` records (at least one), in their
    input order.

    Args:
        records: Records with unique ids.
        fraction: In `(0, 1]`; `1.0` returns all records.
        seed: Picks a different subset for each value.

    Examples:

    >>> from dss_keras.data.word_problems import word_problems
    >>> records = word_problems(100)
    >>> quarter = take_fraction(records, 0.25, seed=1)
    >>> half = take_fraction(records, 0.5, seed=1)
    >>> len(quarter), len(half), set(quarter) <= set(half)
    (25, 50, True)
    >>> quarter == take_fraction(records, 0.25, seed=1)
    True
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"`fraction` must be in (0, 1]. Received: fraction={fraction}")
    _check_int("seed", seed)
    if fraction == 1.0:
        return list(records)
    chosen = _rank(records, "fraction", seed)[: _count(fraction, len(records))]
    return [records[i] for i in sorted(chosen)]


def split_validation(
    records: Sequence[Record],
    fraction: float = VALIDATION_FRACTION,
    *,
    seed: int = VALIDATION_SEED,
) -> tuple[list[Record], list[Record]]:
    """Carves a validation split out of training records.

    The benchmarks without a validation split of their own (cqa, svamp) use
    the defaults: 10% of train, seed 0.

    Args:
        records: Training records with unique ids.
        fraction: Share of the records that goes to validation, in `(0, 1)`.
        seed: Picks a different split for each value.

    Returns:
        `(train, valid)`, disjoint, together all the records, each in input
        order.

    Examples:

    >>> from dss_keras.data.word_problems import word_problems
    >>> train, valid = split_validation(word_problems(50))
    >>> len(train), len(valid)
    (45, 5)
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"`fraction` must be in (0, 1). Received: fraction={fraction}")
    _check_int("seed", seed)
    valid = set(_rank(records, "validation", seed)[: _count(fraction, len(records))])
    train = [r for i, r in enumerate(records) if i not in valid]
    return train, [r for i, r in enumerate(records) if i in valid]
