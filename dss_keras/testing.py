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


def toy_records(num_examples: int = 64, seed: int = 0) -> list[Record]:
    """A few generated word problems with rationales and teacher labels."""
    return word_problems(num_examples, seed=seed)


@functools.lru_cache(maxsize=4)
def toy_vocabulary(vocabulary_size: int = 200) -> bytes:
    """A SentencePiece model trained on the toy records and the task prefixes."""
    texts = []
    for record in toy_records(400, seed=123):
        texts += [record.input, record.label, record.rationale, "predict: explain:"]
    return backbones.train_sentencepiece(texts, vocabulary_size=vocabulary_size)


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
