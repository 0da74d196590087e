"""The one rule for the vocabulary of a model trained from scratch.

A tiny T5 (`preset="tiny"`) gets a SentencePiece vocabulary trained on the
fly. It is trained on **the whole training split** — every training record's
input, label, teacher label and rationale, before `train_fraction` is taken —
plus the two task prefixes; never on validation or test records. Like a
pretrained tokenizer, it is the same for every fraction, seed, alpha and mode
of one dataset, so runs that differ only in those compare like with like, and
a tuned trial and `dss-keras train` with its settings read the same file.

The vocabulary is stored as `vocabulary.spm` in the run directory (or the
tuning project) and read back when it is there.

Examples:

>>> import os, tempfile
>>> from dss_keras import testing
>>> path = os.path.join(tempfile.mkdtemp(), "vocabulary.spm")
>>> proto = load_or_train(path, testing.toy_records(40), vocabulary_size=120)
>>> load_or_train(path, [], vocabulary_size=120) == proto  # read back, not retrained
True
"""

from __future__ import annotations

import os
from typing import Sequence

from dss_keras.data.records import Record
from dss_keras.files import write_bytes


def vocabulary_texts(
    records: Sequence[Record], label_prefix: str = "predict: ",
    rationale_prefix: str = "explain: ",
) -> list[str]:
    """The sentences the vocabulary learns from: the prefixes, then each record's text."""
    texts = [label_prefix + rationale_prefix]
    for record in records:
        texts += [t for t in (record.input, record.label, record.rationale, record.llm_label) if t]
    return texts


def load_or_train(
    path: str,
    train_records: Sequence[Record],
    *,
    vocabulary_size: int,
    label_prefix: str = "predict: ",
    rationale_prefix: str = "explain: ",
) -> bytes:
    """The SentencePiece model at `path`, trained on `train_records` if absent.

    Args:
        path: Where the vocabulary is stored.
        train_records: The whole training split.
        vocabulary_size: Pieces, special tokens included.
        label_prefix, rationale_prefix: The task prefixes, learned as text.

    Returns:
        The serialized SentencePiece model.
    """
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    from dss_keras.backbones import train_sentencepiece

    if not train_records:
        raise ValueError(f"Cannot train the vocabulary {path}: there are no training records.")
    proto = train_sentencepiece(
        vocabulary_texts(train_records, label_prefix, rationale_prefix),
        vocabulary_size=vocabulary_size,
    )
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_bytes(path, proto)
    return proto
