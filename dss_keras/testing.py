"""Tiny fixtures for examples, tests and experiments: no download needed.

Examples:

>>> lm = tiny_seq2seq_lm()
>>> lm.backbone.num_layers
1
"""

from __future__ import annotations

import functools

from dss_keras import backbones
from dss_keras.data.records import Record
from dss_keras.data.word_problems import word_problems
from dss_keras.vocabulary import train_vocabulary


TINY_RUN = dict(
    steps=4, eval_every=2, batch_size=4, vocabulary_size=150, hidden_dim=16,
    intermediate_dim=32, num_layers=1, num_heads=2, max_input_length=48,
    max_label_length=4, max_rationale_length=12,
)
"""`TrainConfig` fields of a run that trains in seconds (tests and examples)."""


def tiny_run_flags() -> list[str]:
    """`TINY_RUN` as `dss-keras train` flags."""
    return [f"--{name.replace('_', '-')}={value}" for name, value in TINY_RUN.items()]


def toy_records(num_examples: int = 64, seed: int = 0) -> list[Record]:
    """A few generated word problems with rationales and teacher labels."""
    return word_problems(num_examples, seed=seed)


@functools.lru_cache(maxsize=4)
def toy_vocabulary(vocabulary_size: int = 200) -> bytes:
    """The vocabulary of 400 toy records, by the rule of `dss_keras.vocabulary`."""
    return train_vocabulary(toy_records(400, seed=123), vocabulary_size)


def tiny_seq2seq_lm(
    hidden_dim: int = 32,
    num_layers: int = 1,
    num_heads: int = 2,
    intermediate_dim: int = 64,
    seed: int = 0,
):
    """A T5 v1.1-shaped `T5Seq2SeqLM` with ~50K parameters on the toy vocabulary."""
    return backbones.tiny_t5(
        proto=toy_vocabulary(),
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_dim=intermediate_dim,
        seed=seed,
    )


def tiny_model(**kwargs):
    """A fresh `DistillStepByStep` around `tiny_seq2seq_lm()` with short budgets."""
    from dss_keras.model import DistillStepByStep

    options = dict(max_input_length=48, max_label_length=4, max_rationale_length=16)
    options.update(kwargs)
    return DistillStepByStep(tiny_seq2seq_lm(), **options)
