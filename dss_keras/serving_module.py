"""The object a SavedModel export saves: a tokenizer, the model's variables, the signatures.

`ServingModule` runs the model's own preprocessor on a TensorFlow Text
SentencePiece tokenizer (`GraphSentencePiece`) and its decoder
(`dss_keras.decoding`), so that the traced graph needs TensorFlow and
TensorFlow Text only. `dss_keras.export` traces and writes it.

Signatures (`text`: string `[None]`):

- `serving_default` -> `label`; `explain` -> `rationale` (greedy generation);
- `choose_label`, with a closed label set (`dss_keras.label_scorer`) ->
  `label`, `probabilities`, `candidates`.

Every signature refuses text that is not valid UTF-8 (`valid_utf8`).
"""

from __future__ import annotations

import tensorflow as tf

from dss_keras import decoding, label_scorer
from dss_keras.label_scorer import LabelSet

SIGNATURES = {"serving_default": "label", "explain": "rationale"}
"""The signatures of every export and their string output."""
CHOOSE_LABEL = "choose_label"
"""The closed-set signature, in exports given a label set."""
CHOOSE_LABEL_OUTPUTS = {"label": "string [None]", "probabilities": "float32 [None, None]",
                        "candidates": "string [None, None]"}
class GraphSentencePiece(tf.Module):
    """A SentencePiece tokenizer made of TensorFlow Text ops only, saved in the graph.

    It has the interface `MultiTaskPreprocessor` uses (`tokenize`,
    `detokenize`, `vocabulary_size`), so the serving graph runs the model's
    own preprocessor with it.
    """

    def __init__(self, proto: bytes):
        super().__init__(name="sentencepiece")
        import tensorflow_text as tf_text

        self.model = tf_text.SentencepieceTokenizer(model=proto, out_type=tf.int32)
        self._size = int(self.model.vocab_size())

    def tokenize(self, text):
        return self.model.tokenize(text)

    def detokenize(self, token_ids):
        return self.model.detokenize(token_ids)

    def vocabulary_size(self) -> int:
        return self._size


class ServingModule(tf.Module):
    """The exported object: a tokenizer, the model's variables and two signatures.

    Args:
        seq2seq_lm: A KerasHub `Seq2SeqLM` with a SentencePiece tokenizer (T5).
        preprocessor: The `MultiTaskPreprocessor` the model was trained with;
            the graph runs its `encode_inputs` and `decode`.
        stop_at_end_token: `False` decodes the full `max_*_length` for every
            batch even once every row has ended (same outputs, fixed cost: for
            benchmarks).
        label_set: A `LabelSet` adds the `choose_label` signature.
    """

    def __init__(self, seq2seq_lm, preprocessor, *, stop_at_end_token: bool = True,
                 label_set: LabelSet | None = None):
        super().__init__(name="dss_keras_serving")
        proto = getattr(preprocessor.tokenizer, "proto", None)
        if not isinstance(proto, bytes):
            raise ValueError(
                "Export needs a SentencePiece tokenizer (e.g. T5's), whose model "
                "goes into the graph. Received: "
                f"tokenizer={type(preprocessor.tokenizer).__name__}"
            )
        self.tokenizer = GraphSentencePiece(proto)
        # The graph reads the Keras model's own variables; tracking them here
        # saves them, and nothing else of Keras, into the SavedModel.
        decoder = decoding.decoder_for(seq2seq_lm, frozen=True)
        # Kernels the decoder keeps in another layout are saved in that one only.
        replaced = {id(v) for v in decoder.replaced_variables}
        self.model_variables = [variable for variable in map(_tf_variable, seq2seq_lm.variables)
                                if id(variable) not in replaced] + list(decoder.variables)
        # Plain Python objects: not trackable, so not saved.
        self._settings = _Settings(
            decoder=decoder,
            preprocessor=preprocessor.with_tokenizer(self.tokenizer),
            stop_at_end_token=bool(stop_at_end_token),
            label_set=label_set,
        )
        if label_set is not None:
            self.choose_label = tf.function(
                self._choose_label,
                input_signature=[tf.TensorSpec([None], tf.string, name="text")],
            )

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serving_default(self, text):
        return {"label": self.generate(valid_utf8(text), "label")}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def explain(self, text):
        return {"rationale": self.generate(valid_utf8(text), "rationale")}

    def _choose_label(self, text):
        settings = self._settings
        return label_scorer.choose_label(
            settings.decoder, settings.preprocessor, valid_utf8(text), settings.label_set,
            lambda texts: self.generate(texts, "label"))

    def signatures(self) -> dict:
        signatures = {"serving_default": self.serving_default, "explain": self.explain}
        if self._settings.label_set is not None:
            signatures[CHOOSE_LABEL] = self.choose_label
        return signatures

    @property
    def preprocessor(self):
        """The model's preprocessor on the graph's own tokenizer."""
        return self._settings.preprocessor

    def generate(self, text, task: str) -> tf.Tensor:
        """Strings `[batch]` -> generated strings `[batch]` for one task."""
        settings = self._settings
        return settings.decoder.generate_text(settings.preprocessor, text, task,
                                              settings.stop_at_end_token)


def valid_utf8(text) -> tf.Tensor:
    """`text`, once every string is known to be valid UTF-8; else `InvalidArgumentError`.

    A string is valid when transcoding it from UTF-8 to UTF-8 changes nothing
    (TensorFlow replaces each invalid sequence as Python's `"replace"` does,
    so this accepts exactly what `bytes.decode("utf-8")` accepts). The error
    names the rows, counted from 0.

    Examples:

    >>> valid_utf8(tf.constant(["Zoë", ""])).numpy().tolist()
    [b'Zo\\xc3\\xab', b'']
    >>> valid_utf8(tf.constant([b"ok", b"caf\\xe9"]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    tensorflow.python.framework.errors_impl.InvalidArgumentError: ...not valid UTF-8...
    """
    repaired = tf.strings.unicode_transcode(text, "UTF-8", "UTF-8", errors="replace",
                                            replacement_char=0xFFFD)
    rows = tf.where(tf.not_equal(repaired, text))[:, 0]
    check = tf.debugging.Assert(
        tf.equal(tf.size(rows), 0),
        ["The text is not valid UTF-8 (decode it as UTF-8 before sending). Received: rows=",
         rows], summarize=20)
    with tf.control_dependencies([check]):
        return tf.identity(text)


# --- helpers -------------------------------------------------------------------


class _Settings:
    """Holds Python objects on a `tf.Module` without making them trackable."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _tf_variable(variable) -> tf.Variable:
    """The `tf.Variable` behind a Keras variable (TensorFlow backend)."""
    value = getattr(variable, "value", variable)
    if not isinstance(value, tf.Variable):
        raise ValueError(
            "Export needs the TensorFlow backend (KERAS_BACKEND=tensorflow). "
            f"Received: variable {variable.path} of type {type(value).__name__}"
        )
    return value
