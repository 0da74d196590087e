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

import io
import os
from typing import Iterable, Sequence

from dss_keras.config import TrainConfig
from dss_keras.data.records import Record
from dss_keras.files import write_bytes


def train_sentencepiece(
    texts: Iterable[str],
    vocabulary_size: int = 1000,
    model_type: str = "bpe",
    split_digits: bool = True,
) -> bytes:
    """Trains a SentencePiece model with T5's special ids and returns its bytes.

    The ids follow T5: pad 0, end-of-sequence 1, unknown 2, no
    beginning-of-sequence token. Digits are split into single tokens by
    default, which suits numbers and arithmetic.

    Args:
        texts: The training sentences.
        vocabulary_size: The number of pieces, special tokens included.
        model_type: `"bpe"` or `"unigram"`.
        split_digits: Whether every digit is a token of its own.

    Returns:
        The serialized SentencePiece model, for `keras_hub.models.T5Tokenizer`.

    Examples:

    >>> proto = train_sentencepiece(["one two three", "four five six"] * 20,
    ...                             vocabulary_size=30)
    >>> import keras_hub
    >>> tokenizer = keras_hub.models.T5Tokenizer(proto=proto)
    >>> tokenizer.pad_token_id, tokenizer.end_token_id
    (0, 1)
    """
    import sentencepiece as spm

    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("Cannot train a vocabulary on no text. Received: texts=[]")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        vocab_size=vocabulary_size,
        model_type=model_type,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        split_digits=split_digits,
        character_coverage=1.0,
        byte_fallback=False,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()


def vocabulary_texts(
    records: Sequence[Record],
    label_prefix: str = TrainConfig.label_prefix,
    rationale_prefix: str = TrainConfig.rationale_prefix,
) -> list[str]:
    """The sentences the vocabulary learns from: the prefixes, then each record's text."""
    texts = [label_prefix + rationale_prefix]
    for record in records:
        texts += [t for t in (record.input, record.label, record.rationale, record.llm_label) if t]
    return texts


def train_vocabulary(
    train_records: Sequence[Record],
    vocabulary_size: int = TrainConfig.vocabulary_size,
    label_prefix: str = TrainConfig.label_prefix,
    rationale_prefix: str = TrainConfig.rationale_prefix,
) -> bytes:
    """The vocabulary of a model trained from scratch on `train_records` (the rule above).

    Args:
        train_records: The whole training split.
        vocabulary_size: Pieces, special tokens included.
        label_prefix, rationale_prefix: The task prefixes, learned as text.

    Returns:
        The serialized SentencePiece model, for `dss_keras.backbones.tiny_t5(proto=...)`.

    Examples:

    >>> from dss_keras import testing
    >>> proto = train_vocabulary(testing.toy_records(40), vocabulary_size=120)
    >>> import keras_hub
    >>> keras_hub.models.T5Tokenizer(proto=proto).vocabulary_size()
    120
    """
    if not train_records:
        raise ValueError("Cannot train a vocabulary: there are no training records.")
    return train_sentencepiece(
        vocabulary_texts(train_records, label_prefix, rationale_prefix),
        vocabulary_size=vocabulary_size,
    )


def load_or_train(
    path: str,
    train_records: Sequence[Record],
    *,
    vocabulary_size: int = TrainConfig.vocabulary_size,
    label_prefix: str = TrainConfig.label_prefix,
    rationale_prefix: str = TrainConfig.rationale_prefix,
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
    if not train_records:
        raise ValueError(f"Cannot train the vocabulary {path}: there are no training records.")
    proto = train_vocabulary(train_records, vocabulary_size, label_prefix, rationale_prefix)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    write_bytes(path, proto)
    return proto
