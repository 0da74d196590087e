"""Turns text into the token tensors of the two tasks, inside the TF graph.

`MultiTaskPreprocessor` adds the task prefix, tokenizes with the backbone's
tokenizer, truncates, and lays out encoder and decoder sequences the way the
backbone's own KerasHub preprocessor does (T5: decoder starts from the pad id;
BART: from `</s> <s>`). Unlike KerasHub's preprocessor it does not pad to a
fixed length: sequences keep their own length so that batches are padded only
as far as they need (see `dss_keras.data.pipeline`). Padding masks come from
lengths, never from comparing ids with the pad id (T5's decoder start *is* the
pad id).

Tokenizing runs in TensorFlow (KerasHub's tokenizers and `tf.data` are
TensorFlow's), whatever Keras' backend; the module imports TensorFlow only when
it tokenizes, so that a model can be built and trained on pre-tokenized batches
where TensorFlow is not installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import keras

from dss_keras.config import TASKS, TrainConfig

if TYPE_CHECKING:
    import tensorflow as tf


@keras.saving.register_keras_serializable(package="dss_keras")
class MultiTaskPreprocessor:
    """Prefixes, tokenizes and packs inputs and targets of both tasks.

    Args:
        tokenizer: The backbone's KerasHub tokenizer (e.g. `T5Tokenizer`).
        label_prefix: Prefix of the label task's input.
        rationale_prefix: Prefix of the rationale task's input.
        max_input_length: Longest encoder sequence, end token included.
        max_label_length: Longest label target, end token included.
        max_rationale_length: Longest rationale target, end token included.
        encoder_start_ids: Ids put before the input tokens (BART: `<s>`).
        decoder_start_ids: Ids the decoder starts from (T5: the pad id).
        end_token_id: The end-of-sequence id.
        pad_token_id: The padding id.

    Examples:

    >>> from dss_keras import testing
    >>> lm = testing.tiny_seq2seq_lm()
    >>> pre = MultiTaskPreprocessor.from_seq2seq_lm(lm, max_label_length=4)
    >>> example = pre.pack_example({"input": "Dee has 3 rocks.", "label": "3",
    ...                             "rationale": "Dee has 3."})
    >>> sorted(example["label"])
    ['decoder_padding_mask', 'decoder_token_ids', 'encoder_padding_mask', 'encoder_token_ids', 'target_ids', 'target_weights']
    >>> int(example["label"]["decoder_token_ids"][0])  # T5 starts from pad
    0
    """

    def __init__(
        self,
        tokenizer,
        label_prefix: str = TrainConfig.label_prefix,
        rationale_prefix: str = TrainConfig.rationale_prefix,
        max_input_length: int = TrainConfig.max_input_length,
        max_label_length: int = TrainConfig.max_label_length,
        max_rationale_length: int = TrainConfig.max_rationale_length,
        encoder_start_ids: Sequence[int] = (),
        decoder_start_ids: Sequence[int] = (0,),
        end_token_id: int = 1,
        pad_token_id: int = 0,
    ):
        for name, value in (
            ("max_input_length", max_input_length),
            ("max_label_length", max_label_length),
            ("max_rationale_length", max_rationale_length),
        ):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be at least 1. Received: {name}={value}")
        self.tokenizer = tokenizer
        self.label_prefix = label_prefix
        self.rationale_prefix = rationale_prefix
        self.max_input_length = int(max_input_length)
        self.max_label_length = int(max_label_length)
        self.max_rationale_length = int(max_rationale_length)
        self.encoder_start_ids = [int(i) for i in encoder_start_ids]
        self.decoder_start_ids = [int(i) for i in decoder_start_ids]
        self.end_token_id = int(end_token_id)
        self.pad_token_id = int(pad_token_id)
        if self.max_input_length <= len(self.encoder_start_ids):
            raise ValueError(
                "`max_input_length` leaves no room for input tokens. "
                f"Received: max_input_length={max_input_length}"
            )

    @classmethod
    def from_seq2seq_lm(cls, seq2seq_lm, **kwargs) -> "MultiTaskPreprocessor":
        """Reads the tokenizer and the sequence layout off a KerasHub `Seq2SeqLM`.

        Layout ids given in `kwargs` win over those read off the model (a
        model being loaded has no vocabulary yet to read them from).
        """
        preprocessor = getattr(seq2seq_lm, "preprocessor", None)
        if preprocessor is None:
            raise ValueError(
                "The Seq2SeqLM has no preprocessor, so its tokenizer is unknown. "
                "Build it with a preprocessor, e.g. `T5Seq2SeqLM(backbone, "
                "preprocessor=T5Seq2SeqLMPreprocessor(tokenizer))`. "
                f"Received: seq2seq_lm={type(seq2seq_lm).__name__}(preprocessor=None)"
            )
        layout_keys = ("encoder_start_ids", "decoder_start_ids", "end_token_id", "pad_token_id")
        if not all(key in kwargs for key in layout_keys):
            kwargs = {**sequence_layout(seq2seq_lm), **kwargs}
        return cls(preprocessor.tokenizer, **kwargs)

    def get_config(self) -> dict:
        return {
            "tokenizer": keras.saving.serialize_keras_object(self.tokenizer),
            "label_prefix": self.label_prefix,
            "rationale_prefix": self.rationale_prefix,
            "max_input_length": self.max_input_length,
            "max_label_length": self.max_label_length,
            "max_rationale_length": self.max_rationale_length,
            "encoder_start_ids": self.encoder_start_ids,
            "decoder_start_ids": self.decoder_start_ids,
            "end_token_id": self.end_token_id,
            "pad_token_id": self.pad_token_id,
        }

    @classmethod
    def from_config(cls, config: dict) -> "MultiTaskPreprocessor":
        config = dict(config)
        config["tokenizer"] = keras.saving.deserialize_keras_object(config["tokenizer"])
        return cls(**config)

    def prefix(self, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"`task` must be one of {TASKS}. Received: task={task!r}")
        return self.label_prefix if task == "label" else self.rationale_prefix

    def max_target_length(self, task: str) -> int:
        self.prefix(task)
        return self.max_label_length if task == "label" else self.max_rationale_length

    # --- single examples (tf.data) -------------------------------------------

    def _tokens(self, text):
        import tensorflow as tf

        return tf.cast(self.tokenizer(text), tf.int32)

    def encode_input(self, text, task: str) -> tf.Tensor:
        """One input string -> encoder ids `[start..., prefix + text..., end]`."""
        import tensorflow as tf

        budget = self.max_input_length - len(self.encoder_start_ids) - 1
        tokens = self._tokens(tf.strings.join([self.prefix(task), text]))[:budget]
        return tf.concat(
            [
                tf.constant(self.encoder_start_ids, tf.int32),
                tokens,
                tf.constant([self.end_token_id], tf.int32),
            ],
            axis=0,
        )

    def encode_target(self, text, task: str) -> tuple[tf.Tensor, tf.Tensor]:
        """One target string -> (decoder input ids, target ids), shifted by one.

        The target ends with the end token and has at most
        `max_target_length(task)` tokens.
        """
        import tensorflow as tf

        # The target is the full sequence shifted by one: it holds all start ids
        # but the first, the tokens and the end token.
        budget = self.max_target_length(task) - len(self.decoder_start_ids)
        full = tf.concat(
            [
                tf.constant(self.decoder_start_ids, tf.int32),
                self._tokens(text)[: max(budget, 0)],
                tf.constant([self.end_token_id], tf.int32),
            ],
            axis=0,
        )
        return full[:-1], full[1:]

    def pack_task(self, input_text, target_text, task: str, weight=1.0) -> dict:
        """One example of one task, as unpadded 1-D tensors."""
        import tensorflow as tf

        encoder_ids = self.encode_input(input_text, task)
        decoder_ids, target_ids = self.encode_target(target_text, task)
        return {
            "encoder_token_ids": encoder_ids,
            "encoder_padding_mask": tf.ones_like(encoder_ids),
            "decoder_token_ids": decoder_ids,
            "decoder_padding_mask": tf.ones_like(decoder_ids),
            "target_ids": target_ids,
            "target_weights": tf.cast(weight, tf.float32) * tf.ones_like(target_ids, tf.float32),
        }

    def pack_example(self, features: dict, tasks: Sequence[str] = ("label",)) -> dict:
        """`{"input", "label"[, "rationale", "has_rationale"]}` -> one dict per task."""
        packed = {"label": self.pack_task(features["input"], features["label"], "label")}
        if "rationale" in tasks:
            weight = features.get("has_rationale", 1.0)
            packed["rationale"] = self.pack_task(
                features["input"], features["rationale"], "rationale", weight
            )
        return packed

    # --- batches (generation) ------------------------------------------------

    def encode_inputs(self, texts, task: str = "label") -> dict:
        """A batch of strings -> padded `encoder_token_ids`/`encoder_padding_mask`.

        The batched form of `encode_input`: prefix, tokenize, truncate, add
        the start and end ids. Generation and the exported serving graph use it.
        """
        import tensorflow as tf

        texts = tf.convert_to_tensor(texts, tf.string)
        batch = tf.shape(texts)[0]
        tokens = self.tokenizer.tokenize(tf.strings.join([self.prefix(task), texts]))
        if not isinstance(tokens, (tf.Tensor, tf.RaggedTensor)):
            # KerasHub tokenizers return Python lists when run eagerly.
            tokens = tf.ragged.constant(tokens, dtype=tf.int32, ragged_rank=1)
        tokens = tf.cast(tokens, tf.int32)
        budget = self.max_input_length - len(self.encoder_start_ids) - 1
        parts = [tokens[:, :budget], tf.fill([batch, 1], tf.constant(self.end_token_id, tf.int32))]
        if self.encoder_start_ids:
            starts = tf.constant([self.encoder_start_ids], tf.int32)
            parts.insert(0, tf.tile(starts, [batch, 1]))
        ids = tf.concat(parts, axis=1)
        return {
            "encoder_token_ids": ids.to_tensor(self.pad_token_id),
            "encoder_padding_mask": tf.ones_like(ids).to_tensor(0),
        }

    def encode_targets(self, texts, task: str = "label") -> tuple[tf.Tensor, tf.Tensor]:
        """A batch of target strings -> the tokens a decoder is scored on, and their mask.

        The batched form of the targets `encode_target` trains on, without
        the start ids: the text's tokens, truncated as in training, then the
        end token; padded with the pad id. Closed-set scoring reads these
        (`dss_keras.label_scorer`).

        Returns:
            int32 `target_ids` and `target_mask`, each `[batch, length]`.
        """
        import tensorflow as tf

        texts = tf.convert_to_tensor(texts, tf.string)
        tokens = self.tokenizer.tokenize(texts)
        if not isinstance(tokens, (tf.Tensor, tf.RaggedTensor)):
            tokens = tf.ragged.constant(tokens, dtype=tf.int32, ragged_rank=1)
        budget = max(self.max_target_length(task) - len(self.decoder_start_ids), 0)
        end = tf.fill([tf.shape(texts)[0], 1], tf.constant(self.end_token_id, tf.int32))
        ids = tf.concat([tf.cast(tokens, tf.int32)[:, :budget], end], axis=1)
        return ids.to_tensor(self.pad_token_id), tf.ones_like(ids).to_tensor(0)

    def decode(self, token_ids) -> tf.Tensor:
        """Generated ids -> strings, cut at the first end token, special ids dropped."""
        import tensorflow as tf

        token_ids = tf.convert_to_tensor(token_ids, tf.int32)
        is_end = tf.cast(tf.equal(token_ids, self.end_token_id), tf.int32)
        keep = tf.equal(tf.cumsum(is_end, axis=-1), 0)
        for special in sorted(set(self.decoder_start_ids) | {self.pad_token_id}):
            keep &= tf.not_equal(token_ids, special)
        # A backbone's vocabulary can be larger than its tokenizer's (T5: 32128
        # embeddings for 32000 pieces); ids past the tokenizer have no text.
        keep &= tf.less(token_ids, self.tokenizer.vocabulary_size())
        ragged = tf.ragged.boolean_mask(token_ids, keep)
        return tf.strings.strip(self.tokenizer.detokenize(ragged))

    def with_tokenizer(self, tokenizer) -> "MultiTaskPreprocessor":
        """The same preprocessor on another tokenizer with the same vocabulary.

        The tokenizer needs `tokenize`, `detokenize` and `vocabulary_size()`
        (the SavedModel export passes a plain TensorFlow Text one).
        """
        config = self.get_config()
        config["tokenizer"] = tokenizer
        return type(self)(**config)


def sequence_layout(seq2seq_lm) -> dict:
    """The special ids a KerasHub `Seq2SeqLM`'s own preprocessor packs with.

    Returns:
        A dict with `encoder_start_ids`, `decoder_start_ids`, `end_token_id`
        and `pad_token_id`.
    """
    preprocessor = seq2seq_lm.preprocessor
    if not preprocessor.built:
        preprocessor.build(None)
    encoder = preprocessor.encoder_packer
    decoder = preprocessor.decoder_packer
    return {
        "encoder_start_ids": _as_list(encoder.start_value),
        "decoder_start_ids": _as_list(decoder.start_value),
        "end_token_id": _as_list(decoder.end_value)[-1],
        "pad_token_id": int(decoder.pad_value),
    }


def _as_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]
