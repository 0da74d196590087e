"""A generated task on which rationales carry real information.

One-operation word problems with a distractor sentence, e.g.

    input:     Dee has 10 rocks. Then Dee gives 5 to Gus. Gus has 8 rocks.
               How many rocks does Dee have now?
    label:     5
    rationale: Dee starts with 10. 10 - 5 = 5.

The rationale names the number that matters and writes the arithmetic out,
which is what a teacher's chain of thought gives a student. The generator is
deterministic for a seed, needs no download, and is what the quickstart and
the tests train on.
"""

from __future__ import annotations

import random

from dss_keras.data.records import Record

NAMES = (
    "Dee", "Gus", "Ana", "Bo", "Cy", "Eli", "Fay", "Hal", "Ivy", "Jo",
    "Kai", "Lu", "Max", "Nia", "Oz", "Pia", "Rex", "Sam", "Tia", "Uma",
)
THINGS = (
    "rocks", "apples", "cards", "coins", "books", "pens", "shells", "stamps",
    "marbles", "eggs", "cups", "hats",
)
# (verb phrase, operator): "gets 3 more" adds, "gives 3 to X" subtracts, ...
_OPERATIONS = (
    ("finds {n} more", "+"),
    ("buys {n} more", "+"),
    ("gives {n} to {other}", "-"),
    ("lends {n} to {other}", "-"),
    ("loses {n}", "-"),
    ("triples them", "*3"),
    ("doubles them", "*2"),
)


def _problem(rng: random.Random, index: int) -> Record:
    owner, other = rng.sample(NAMES, 2)
    thing = rng.choice(THINGS)
    phrase, op = rng.choice(_OPERATIONS)
    if op == "+":
        start, n = rng.randint(1, 30), rng.randint(1, 20)
        answer, step = start + n, f"{start} + {n} = {start + n}"
    elif op == "-":
        start = rng.randint(2, 40)
        n = rng.randint(1, start - 1)
        answer, step = start - n, f"{start} - {n} = {start - n}"
    else:
        factor = int(op[1:])
        start, n = rng.randint(1, 15), factor
        answer, step = start * factor, f"{start} * {factor} = {start * factor}"
    distractor = rng.randint(1, 40)
    text = (
        f"{owner} has {start} {thing}. Then {owner} {phrase.format(n=n, other=other)}. "
        f"{other} has {distractor} {thing}. How many {thing} does {owner} have now?"
    )
    return Record(
        id=f"wp-{index:06d}",
        input=text,
        label=str(answer),
        rationale=f"{owner} starts with {start}. {step}.",
        llm_label=str(answer),
    )


def word_problems(num_examples: int, seed: int = 0) -> list[Record]:
    """Generates `num_examples` word problems, the same ones for the same seed.

    Examples:

    >>> records = word_problems(3, seed=0)
    >>> len(records), records[0].id
    (3, 'wp-000000')
    >>> records == word_problems(3, seed=0)
    True
    """
    rng = random.Random(seed)
    return [_problem(rng, i) for i in range(num_examples)]
