"""Seq2seq language models to distill into.

Three ways to get a `keras_hub.models.Seq2SeqLM`:

- `from_preset("t5_1.1_base")`: a KerasHub preset name (downloaded once and
  cached by KerasHub) or a local preset directory; or a `transformers` T5
  checkpoint (`"hf://google/flan-t5-base"` or its local directory), read by
  `dss_keras.hf_t5`;
- `tiny_t5(proto=...)`: a small, randomly initialised T5 v1.1 on a
  SentencePiece vocabulary (`dss_keras.vocabulary.train_vocabulary` trains one
  on the fly; quickstart, tests and from-scratch experiments);
- any `Seq2SeqLM` you build yourself (T5, BART, ...).
"""

from __future__ import annotations

import os
import random
from typing import Iterable

import keras
import keras_hub
import numpy as np
from keras.src.backend.common import global_state
from keras.src.random import seed_generator
from keras.src.utils import rng_utils

from dss_keras.tf_fast_path.activations import gelu_tanh
from dss_keras.vocabulary import train_sentencepiece

# The student sizes of the paper (T5 v1.1), as KerasHub preset names.
PAPER_PRESETS = ("t5_1.1_small", "t5_1.1_base", "t5_1.1_large", "t5_1.1_xxl")


def tiny_t5(
    texts: Iterable[str] | None = None,
    *,
    proto: bytes | None = None,
    vocabulary_size: int = 1000,
    num_layers: int = 2,
    num_heads: int = 4,
    hidden_dim: int = 64,
    intermediate_dim: int = 128,
    key_value_dim: int | None = None,
    dropout: float = 0.0,
    seed: int = 0,
    dtype=None,
    embedding_size: int | None = None,
) -> keras_hub.models.T5Seq2SeqLM:
    """A small, randomly initialised T5 v1.1 with its own vocabulary.

    The architecture is T5 v1.1's (gated tanh-GELU feed-forward, untied
    embeddings, pre-norm with RMS layer norm), scaled down. Token embeddings
    are drawn from N(0, 1): KerasHub's default initialiser starts every
    embedding near the same vector, which leaves a small model stuck on one
    answer.

    Args:
        texts: Text to train the SentencePiece vocabulary on; ignored when
            `proto` is given.
        proto: An existing SentencePiece model (bytes).
        vocabulary_size: Vocabulary size when training one.
        num_layers, num_heads, hidden_dim, intermediate_dim, key_value_dim,
            dropout: The backbone's shape.
        seed: Seeds the weights.
        dtype: A dtype or `keras.DTypePolicy` name (e.g. `"mixed_bfloat16"`).
        embedding_size: Rows of the embedding table and the output layer;
            defaults to the vocabulary's size (benchmarks set T5's 32128).

    Returns:
        A `keras_hub.models.T5Seq2SeqLM` with a `T5Seq2SeqLMPreprocessor`.

    Examples:

    >>> lm = tiny_t5(["two plus two is four", "three plus one is four"] * 10,
    ...              vocabulary_size=40, hidden_dim=16, intermediate_dim=32,
    ...              num_heads=2, num_layers=1)
    >>> lm.backbone.hidden_dim
    16
    """
    _seed_keras(seed)
    if proto is None:
        if texts is None:
            raise ValueError("`tiny_t5` needs `texts` or `proto`.")
        proto = train_sentencepiece(texts, vocabulary_size=vocabulary_size)
    tokenizer = keras_hub.models.T5Tokenizer(proto=proto)
    backbone = keras_hub.models.T5Backbone(
        vocabulary_size=embedding_size or tokenizer.vocabulary_size(),
        num_layers=num_layers,
        num_heads=num_heads,
        hidden_dim=hidden_dim,
        intermediate_dim=intermediate_dim,
        key_value_dim=key_value_dim,
        dropout=dropout,
        activation=gelu_tanh,
        use_gated_activation=True,
        tie_embedding_weights=False,
        dtype=dtype,
    )
    reinitialize_token_embeddings(backbone, seed=seed)
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(tokenizer=tokenizer)
    return keras_hub.models.T5Seq2SeqLM(
        backbone=backbone, preprocessor=preprocessor, dtype=dtype
    )


def _seed_keras(seed: int) -> None:
    """`keras.utils.set_random_seed`, without clearing TensorFlow's kernel cache.

    In eager mode `tf.random.set_seed` also clears the kernel cache, which
    deletes the SentencePiece resource of every tokenizer made before: building
    a second model would break the first one's data pipeline. This sets the
    same seeds (Keras' generator, Python's and NumPy's, and TensorFlow's global
    seed, from which `tf.data` shuffles draw) and leaves the cache alone.
    """
    random.seed(seed)
    np.random.seed(seed)
    global_state.set_global_attribute(rng_utils.GLOBAL_RANDOM_SEED, seed)
    global_state.set_global_attribute(seed_generator.GLOBAL_SEED_GENERATOR, None)
    try:  # TensorFlow's global seed, for `tf.data` (where TensorFlow is installed)
        from tensorflow.python.eager import context as tf_context
    except ImportError:
        return
    eager = tf_context.context()
    eager._seed, eager._rng = seed, random.Random(seed)


def reinitialize_token_embeddings(backbone: keras.Model, seed: int = 0) -> None:
    """Redraws a backbone's token embeddings from N(0, 1).

    An untied output projection is drawn from N(0, 1 / hidden_dim), so that
    the first logits are of order one (the scale of the T5 v1.1 `lm_head`
    initialisation).
    """
    rng = np.random.default_rng(seed)
    embedding = backbone.token_embedding
    embedding.embeddings.assign(
        rng.normal(0.0, 1.0, size=embedding.embeddings.shape).astype("float32")
    )
    reverse = getattr(embedding, "reverse_embeddings", None)
    if reverse is not None and not embedding.tie_weights:
        stddev = float(backbone.hidden_dim) ** -0.5
        reverse.assign(rng.normal(0.0, stddev, size=reverse.shape).astype("float32"))


def from_preset(
    preset: str, *, load_weights: bool = True, **kwargs
) -> keras_hub.models.Seq2SeqLM:
    """Loads a `Seq2SeqLM` from a KerasHub preset or a `transformers` T5 checkpoint.

    T5-family `transformers` checkpoints (T5, T5 v1.1, Flan-T5, mT5), as an
    `hf://owner/name` handle or a local directory, are read by
    `dss_keras.hf_t5.load_checkpoint`; everything else, `hf://` handles of
    other models included, by KerasHub.

    Args:
        preset: A preset name such as `"t5_1.1_base"`, a `kaggle://` or
            `hf://` handle (e.g. `"hf://google/flan-t5-base"`), a local
            directory written by `save_to_preset()`, or a local `transformers`
            checkpoint directory.
        load_weights: `False` builds the architecture with random weights.
        **kwargs: Passed to `keras_hub.models.Seq2SeqLM.from_preset`, or `dtype`
            to `dss_keras.hf_t5.load_checkpoint`.

    Raises:
        RuntimeError: when the preset cannot be fetched; the message names the
            preset and says how to use a local directory instead.
    """
    from dss_keras import hf_t5

    checkpoint = hf_t5.checkpoint_directory(preset)
    if checkpoint is not None:
        return hf_t5.load_checkpoint(checkpoint, load_weights=load_weights, **kwargs)
    if os.path.isdir(preset):
        return keras_hub.models.Seq2SeqLM.from_preset(
            preset, load_weights=load_weights, **kwargs
        )
    try:
        return keras_hub.models.Seq2SeqLM.from_preset(
            preset, load_weights=load_weights, **kwargs
        )
    except (OSError, ConnectionError, ValueError) as error:
        raise RuntimeError(
            f"Could not load the preset {preset!r}: {error}\n"
            "If this machine cannot reach the model hub, download the preset on "
            "a machine that can (`keras_hub.models.Seq2SeqLM.from_preset(name)"
            ".save_to_preset(dir)`), copy the directory here and pass its path "
            "instead of the name."
        ) from error
