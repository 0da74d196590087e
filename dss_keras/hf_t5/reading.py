"""A `transformers` T5 checkpoint directory -> a KerasHub `T5Seq2SeqLM` with the same weights.

`load_checkpoint(directory)` reads `config.json` (`dss_keras.hf_t5.config`), the tokenizer
(`dss_keras.hf_t5.tokenizer`) and the weights (`dss_keras.hf_t5.weights`), builds the backbone
and copies every tensor into its variable (`dss_keras.hf_t5.layout`). Every tensor of the
checkpoint must find its variable, with the same shape, and every variable its tensor: an
unknown or missing tensor is an error that names it.
"""

from __future__ import annotations

import json
import logging
import os

import keras_hub
import numpy as np

from dss_keras.hf_t5 import layout
from dss_keras.hf_t5.config import backbone_arguments
from dss_keras.hf_t5.tokenizer import read_tokenizer
from dss_keras.hf_t5.weights import CheckpointWeights

logger = logging.getLogger(__name__)


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    load_weights: bool = True,
    dtype=None,
    dropout: float | None = None,
) -> keras_hub.models.T5Seq2SeqLM:
    """Loads a local `transformers` T5, T5 v1.1, Flan-T5 or mT5 checkpoint into KerasHub.

    Args:
        directory: A folder with `config.json`, `spiece.model` and the weights
            (`model.safetensors`, shards with `model.safetensors.index.json`, or
            `pytorch_model.bin` when PyTorch is installed).
        load_weights: `False` builds the architecture with random weights.
        dtype: A dtype or `keras.DTypePolicy` name for the model (e.g. `"bfloat16"`).
        dropout: Overrides the checkpoint's `dropout_rate` (e.g. `0.0` to compare a training
            run with another framework's); `None` keeps it.

    Returns:
        A `keras_hub.models.T5Seq2SeqLM` with a `T5Seq2SeqLMPreprocessor` on the checkpoint's
        SentencePiece model.

    Raises:
        ValueError: for a config field, tensor or tokenizer KerasHub's T5 cannot express,
            naming it.
        FileNotFoundError: without `config.json`, weights or `spiece.model`.

    Examples:

    >>> import tempfile
    >>> from dss_keras import hf_t5, testing
    >>> directory = hf_t5.save_checkpoint(testing.tiny_seq2seq_lm(), tempfile.mkdtemp() + "/t5")
    >>> lm = load_checkpoint(directory)
    >>> lm.backbone.hidden_dim, lm.backbone.tie_embedding_weights
    (32, False)
    """
    directory = os.fspath(directory)
    config = read_config(directory)
    source = os.path.join(directory, "config.json")
    arguments = backbone_arguments(config, source)
    if dropout is not None:
        arguments["dropout"] = float(dropout)
    tokenizer = read_tokenizer(directory, config)
    backbone = keras_hub.models.T5Backbone(**arguments, dtype=dtype)
    if load_weights:
        assign_weights(backbone, CheckpointWeights(directory))
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(tokenizer=tokenizer)
    return keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=preprocessor, dtype=dtype)


def read_config(directory: str) -> dict:
    """The parsed `config.json` of a checkpoint directory."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{directory}: no config.json; is this a transformers "
                                f"checkpoint? Received: directory={directory}")
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object. Received: {type(config).__name__}")
    return config


def assign_weights(backbone, weights) -> None:
    """Copies a checkpoint's tensors into a `T5Backbone`'s variables.

    Args:
        backbone: The `T5Backbone` built from the checkpoint's config.
        weights: Tensor name -> float32 array (`CheckpointWeights`); it may have a
            `directory` attribute, used in messages.

    Raises:
        ValueError: naming a missing, unexpected or misshapen tensor, or an untied output
            layer in a checkpoint whose config ties (and scales) it.
    """
    source = getattr(weights, "directory", "checkpoint")
    table = layout.weight_table(backbone)
    tied = backbone.token_embedding.tie_weights
    _check_names(source, set(weights), {weight.name for weight in table}, tied)
    shared = weights[layout.SHARED]
    copies = [name for name in layout.EMBEDDING_COPIES if name in weights]
    for copy in copies + ([layout.LM_HEAD] if tied and layout.LM_HEAD in weights else []):
        if not np.array_equal(weights[copy], shared):
            reason = ("T5 shares one embedding between its stacks" if copy != layout.LM_HEAD else
                      "config.json ties the output layer to the embedding and scales the "
                      "logits by d_model ** -0.5 (tie_word_embeddings unset or true), and "
                      "KerasHub's T5 scales only a tied one")
            raise ValueError(f"{source}: {copy} differs from {layout.SHARED}; {reason}. "
                             f"Received: tensor={copy}")
    if not tied and layout.LM_HEAD not in weights:
        logger.warning(
            "%s: config.json asks for an untied output layer without the d_model ** -0.5 "
            "scale, and the checkpoint has no %s (transformers 5 saves a T5 v1.1 whose head "
            "still equals %s that way, and trains the two as one tensor). The KerasHub model "
            "gets a copy of %s as its own output layer: the same outputs, but it trains "
            "separately.", source, layout.LM_HEAD, layout.SHARED, layout.SHARED)
    for weight in table:
        present = weight.name in weights and weight.name != layout.SHARED
        value = weights[weight.name] if present else shared
        if weight.transposed:
            value = value.T
        if tuple(value.shape) != tuple(weight.variable.shape):
            raise ValueError(f"{source}: {weight.name} has the wrong shape for config.json "
                             f"(expected {_checkpoint_shape(weight)}). "
                             f"Received: shape={_checkpoint_shape(weight, value.shape)}")
        weight.variable.assign(value)


def _check_names(source: str, found: set[str], expected: set[str], tied: bool) -> None:
    if tied and layout.LM_HEAD in found:
        expected = expected | {layout.LM_HEAD}  # allowed if equal to the embedding
    missing = sorted(expected - found - {layout.LM_HEAD})
    if missing:
        raise ValueError(f"{source}: tensors missing for the config.json architecture. "
                         f"Received: missing={missing[:8]}{' ...' if len(missing) > 8 else ''}")
    unexpected = sorted(found - expected - set(layout.EMBEDDING_COPIES) - set(layout.SKIPPED))
    if unexpected:
        biases = [name for name in unexpected if "relative_attention_bias" in name]
        reason = ("a relative attention bias in a layer other than the first (umT5's layout; "
                  "KerasHub's T5 has one per stack)" if biases else
                  "tensors that KerasHub's T5 has no place for")
        raise ValueError(f"{source}: {reason}. Received: unexpected={unexpected[:8]}")


def _checkpoint_shape(weight: layout.Weight, shape=None) -> tuple:
    """A variable's shape (or `shape`, in the variable's layout) as the checkpoint stores it."""
    shape = tuple(weight.variable.shape if shape is None else shape)
    return shape[::-1] if weight.transposed else shape
