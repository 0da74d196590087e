"""The SentencePiece tokenizer of a `transformers` T5 checkpoint: read as KerasHub's, and written.

A checkpoint's `spiece.model` becomes a `keras_hub.models.T5Tokenizer`, which gives the same ids
as the checkpoint's own tokenizer for text (`transformers` appends `</s>`, as KerasHub's
preprocessor does). It is checked against `config.json`: the pad, end-of-sequence and decoder
start ids must be the tokenizer's (KerasHub's T5 starts decoding from the pad id), and the
embedding must have a row for every piece (`vocab_size` may be larger: Google's checkpoints
have 32128 rows for 32000 pieces and 100 sentinels).

Not carried over: the sentinel tokens `<extra_id_0>`, ... that `transformers` adds after the
pieces (span-corruption pre-training uses them; KerasHub's tokenizer reads them as text). A
checkpoint with a `tokenizer.json` but no `spiece.model` is refused: KerasHub's T5 tokenizer is a
SentencePiece model.

Written: `spiece.model`, and a `tokenizer_config.json` and `special_tokens_map.json` that name
`T5Tokenizer`, its special tokens and as many sentinels as the embedding has spare rows for
(at most 100). transformers 4 reads any SentencePiece model as trained; transformers 5's
`T5Tokenizer` reads every one as a Unigram model, which Google's T5 vocabularies are but
dss-keras' own `train_sentencepiece` (BPE by default) is not: for such a vocabulary a warning
says that transformers 5 splits some texts differently (the weights are exact either way).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import keras_hub

from dss_keras.hf_t5.config import DEFAULTS

SPIECE = "spiece.model"
TOKENIZER_JSON = "tokenizer.json"
MAX_SENTINELS = 100

logger = logging.getLogger(__name__)


def read_tokenizer(directory: str, config: dict[str, Any]) -> keras_hub.models.T5Tokenizer:
    """The checkpoint's `spiece.model` as a `T5Tokenizer`, checked against `config`.

    Args:
        directory: The checkpoint directory.
        config: Its parsed `config.json`.

    Raises:
        FileNotFoundError: without `spiece.model` (saying why a `tokenizer.json` is not enough).
        ValueError: when the config's special ids or `vocab_size` disagree with the tokenizer.
    """
    path = os.path.join(directory, SPIECE)
    if not os.path.exists(path):
        if os.path.exists(os.path.join(directory, TOKENIZER_JSON)):
            reason = (f"it has {TOKENIZER_JSON} but no {SPIECE}: KerasHub's T5Tokenizer is a "
                      f"SentencePiece model, which a {TOKENIZER_JSON} does not hold")
        else:
            reason = f"a T5 checkpoint's tokenizer is its {SPIECE}"
        raise FileNotFoundError(f"{directory}: {reason}. Received: files="
                                f"{sorted(os.listdir(directory))}")
    with open(path, "rb") as file:
        proto = file.read()
    try:
        tokenizer = keras_hub.models.T5Tokenizer(proto=proto)
    except ValueError as error:  # a special piece is missing
        raise ValueError(f"{path}: not a T5 SentencePiece model: {error} "
                         f"Received: file={SPIECE}") from error
    check_config_ids(tokenizer, config, os.path.join(directory, "config.json"))
    return tokenizer


def check_config_ids(tokenizer, config: dict[str, Any], source: str) -> None:
    """Refuses a config whose special ids or embedding rows do not fit the tokenizer."""
    pad, end = tokenizer.pad_token_id, tokenizer.end_token_id
    expected = {"pad_token_id": pad, "eos_token_id": end, "decoder_start_token_id": pad}
    for field, token_id in expected.items():
        value = config.get(field, DEFAULTS[field])
        if isinstance(value, list) and field == "eos_token_id":
            value = value[0] if len(set(value)) == 1 else value
        if value != token_id:
            raise ValueError(
                f"{source}: KerasHub's T5 uses the tokenizer's ids (pad {pad}, end {end}, and "
                f"decoding starts from pad); {field} should be {token_id}. "
                f"Received: {field}={value!r}")
    pieces = tokenizer.vocabulary_size()
    rows = config.get("vocab_size", DEFAULTS["vocab_size"])
    if rows < pieces:
        raise ValueError(f"{source}: the embedding has fewer rows than {SPIECE} has pieces "
                         f"({pieces}). Received: vocab_size={rows}")


def write_tokenizer(directory: str, tokenizer, vocabulary_rows: int) -> None:
    """Writes `spiece.model` and the tokenizer config files `transformers` reads.

    Args:
        directory: The checkpoint directory (exists).
        tokenizer: A KerasHub SentencePiece tokenizer with T5's special tokens.
        vocabulary_rows: The embedding's rows; sentinels fill the spare ones (at most 100).

    Raises:
        ValueError: for a tokenizer without a SentencePiece model.
    """
    proto = getattr(tokenizer, "proto", None)
    if not isinstance(proto, bytes):
        raise ValueError("Writing a transformers checkpoint needs a SentencePiece tokenizer "
                         f"(T5's). Received: tokenizer={type(tokenizer).__name__}")
    model_type = sentencepiece_type(proto)
    if model_type != "UNIGRAM":
        logger.warning(
            "%s: the SentencePiece model is %s; transformers 5's T5Tokenizer reads it as a "
            "Unigram model and splits some texts differently (transformers 4 and the "
            "sentencepiece library read it as trained). Train the vocabulary with "
            "model_type='unigram' for a student that transformers 5 tokenizes exactly.",
            directory, model_type)
    sentinels = max(0, min(MAX_SENTINELS, vocabulary_rows - tokenizer.vocabulary_size()))
    special = {"eos_token": tokenizer.end_token, "pad_token": tokenizer.pad_token,
               "unk_token": tokenizer.id_to_token(_unknown_id(tokenizer))}
    with open(os.path.join(directory, SPIECE), "wb") as file:
        file.write(proto)
    _write_json(os.path.join(directory, "tokenizer_config.json"),
                {**special, "extra_ids": sentinels, "model_max_length": 512,
                 "tokenizer_class": "T5Tokenizer"})
    sentinel_tokens = [f"<extra_id_{i}>" for i in range(sentinels)]
    _write_json(os.path.join(directory, "special_tokens_map.json"),
                {**special, "additional_special_tokens": sentinel_tokens})


def sentencepiece_type(proto: bytes) -> str:
    """`"UNIGRAM"`, `"BPE"`, `"WORD"` or `"CHAR"`: how a SentencePiece model splits text."""
    from sentencepiece import sentencepiece_model_pb2

    spec = sentencepiece_model_pb2.ModelProto.FromString(proto).trainer_spec
    return spec.ModelType.Name(spec.model_type)


def _unknown_id(tokenizer) -> int:
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_proto=tokenizer.proto).unk_id()


def _write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file, indent=2, sort_keys=True)
        file.write("\n")
