"""SavedModel export for label-only serving: raw strings in, label strings out.

The exported graph does everything: the task prefix, SentencePiece
tokenization (TensorFlow Text ops), truncation, the encoder, greedy decoding
with key/value caches (`dss_keras.decoding`) and detokenization. Loading it
needs TensorFlow and TensorFlow Text only, so TF Serving runs it as is. Exports
are laid out as TF Serving expects: `saved_models/<name>/<version>/`.

Signatures:

- `serving_default`: `text` (string `[None]`) -> `label` (string `[None]`);
- `explain`: `text` -> `rationale`;
- `choose_label`, when the export is given a closed label set
  (`dss_keras.label_scorer`): `text` -> `label`, `probabilities` (float32
  `[None, candidates]`) and `candidates` (string `[None, candidates]`), every
  candidate scored in one decoder pass.

Every signature refuses text that is not valid UTF-8 (an `InvalidArgumentError`
that names the rows; TF Serving answers it with status 400), as `dss-keras
predict` does; the test is Python's (`bytes.decode("utf-8")`). The weights are exported at a chosen precision
(`dss_keras.export_precision`: float32, bfloat16 or int8), recorded with the
signatures in `assets.extra/dss_keras.json`.

Usage (the model is a trained `DistillStepByStep`):

```python
path = export_for_serving(model, "saved_models/cqa")  # saved_models/cqa/1
load_and_predict(path, ["Where do you keep a book? ..."])
```
"""

from __future__ import annotations

import os
import re
import shutil
from typing import Iterable

import tensorflow as tf

from dss_keras import decoding
from dss_keras.export_precision import (forward_only_int8, precision_of, weight_bytes,
                                        with_precision)
from dss_keras.files import remove_abandoned_staging, staging_dir, write_json
from dss_keras import label_scorer
from dss_keras.label_scorer import LabelSet
from dss_keras.tf_fast_path.lean_t5 import keras_hub_t5_layers

SIGNATURES = {"serving_default": "label", "explain": "rationale"}
"""The signatures of every export and their string output."""
CHOOSE_LABEL = "choose_label"
"""The closed-set signature, in exports given a label set."""
CHOOSE_LABEL_OUTPUTS = {"label": "string [None]", "probabilities": "float32 [None, None]",
                        "candidates": "string [None, None]"}
METADATA_PATH = os.path.join("assets.extra", "dss_keras.json")
# Attributes that make TensorFlow compile a function or a cluster with XLA.
XLA_ATTRIBUTES = ("_XlaMustCompile", "_XlaCompile", "_XlaScope")


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
        self.model_variables = [_tf_variable(v) for v in seq2seq_lm.variables]
        # Plain Python objects: not trackable, so not saved.
        self._settings = _Settings(
            decoder=decoding.decoder_for(seq2seq_lm),
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


def export_for_serving(
    model,
    export_dir: str | os.PathLike | None = None,
    version: int | None = None,
    *,
    name: str | None = None,
    stop_at_end_token: bool = True,
    precision: str = "float32",
    label_set: LabelSet | str | None = None,
) -> str:
    """Writes `model` as a SavedModel for TF Serving and returns its version directory.

    The write is atomic: the SavedModel is written into a temporary directory
    beside the versions (its name is not a number, so TF Serving ignores it),
    checked for XLA ops (`verify_saved_model`), made world-readable (0755
    folders, 0644 files) and then renamed to `<export_dir>/<version>`. An
    existing version is never replaced. Staging folders left by exports that
    died are removed.

    Args:
        model: A `DistillStepByStep` model, or any object with `seq2seq_lm`
            (a KerasHub T5 `Seq2SeqLM`) and `preprocessor` (a
            `MultiTaskPreprocessor`) attributes.
        export_dir: The model's base directory; defaults to
            `saved_models/<name>`.
        version: A positive integer; defaults to one more than the highest
            existing version (1 for the first export).
        name: The base directory's name when `export_dir` is not given;
            defaults to the model's `name`.
        stop_at_end_token: `False` always decodes the maximum lengths (same
            outputs, fixed cost; for benchmarks).
        precision: `"float32"`, `"bfloat16"` or `"int8"`: the weights and
            compute of the graph (`dss_keras.export_precision`).
        label_set: A `LabelSet`, or its spec (`"choices"`, `"yes,no"`): adds
            the `choose_label` signature (`dss_keras.label_scorer`).

    Returns:
        The path of the new version directory.

    Raises:
        FileExistsError: when `<export_dir>/<version>` exists.
        ValueError: for a version that is not a positive integer, an unknown
            precision or label set, or a model without a SentencePiece
            tokenizer.

    Examples:

    ```python
    model = DistillStepByStep(dss_keras.testing.tiny_seq2seq_lm())
    path = export_for_serving(model, "saved_models/toy")  # saved_models/toy/1
    load_and_predict(path, ["Dee has 3 rocks. How many rocks does Dee have?"])
    ```
    """
    export_dir = os.fspath(export_dir or os.path.join("saved_models", name or _model_name(model)))
    os.makedirs(export_dir, exist_ok=True)
    version = next_version(export_dir) if version is None else _check_version(version)
    target = os.path.join(export_dir, str(version))
    _refuse_existing(target, version)
    if isinstance(label_set, str):
        label_set = LabelSet.parse(label_set)
    seq2seq_lm = with_precision(model.seq2seq_lm, precision)
    module = ServingModule(
        seq2seq_lm, model.preprocessor, stop_at_end_token=stop_at_end_token, label_set=label_set
    )
    remove_abandoned_staging(export_dir)
    staging = staging_dir(export_dir, str(version))
    try:
        # Traced through KerasHub's own T5 layers and a forward-only int8 call: the same
        # values, and no custom gradient for TensorFlow to warn about when loading.
        backbone = seq2seq_lm.backbone
        with keras_hub_t5_layers(backbone), forward_only_int8(backbone):
            tf.saved_model.save(module, staging, signatures=module.signatures())
        verify_saved_model(staging)
        _write_metadata(staging, model, seq2seq_lm, version, stop_at_end_token, label_set)
        _make_world_readable(staging)
        _refuse_existing(target, version)
        os.rename(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _make_world_readable(path: str) -> None:
    """0755 folders and 0644 files, like any model directory (TF Serving may run as another user)."""
    os.chmod(path, 0o755)
    for folder, names, files in os.walk(path):
        for name in names:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def next_version(export_dir: str | os.PathLike) -> int:
    """One more than the highest integer-named subdirectory of `export_dir` (1 if none)."""
    return max(versions(export_dir), default=0) + 1


def versions(export_dir: str | os.PathLike) -> list[int]:
    """The versions under `export_dir`, as TF Serving sees them (sorted)."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(entry)
        for entry in os.listdir(export_dir)
        if re.fullmatch(r"[0-9]+", entry) and os.path.isdir(os.path.join(export_dir, entry))
    )


def load_and_predict(
    saved_model_dir: str | os.PathLike,
    texts: Iterable[str],
    signature: str = "serving_default",
    batch_size: int = 256,
) -> list[str]:
    """Runs an exported SavedModel on `texts` and returns its output strings.

    Args:
        saved_model_dir: A version directory, or a base directory (its highest
            version is used).
        texts: The raw inputs (no task prefix).
        signature: `"serving_default"` for labels, `"explain"` for rationales,
            `"choose_label"` for the closed label set's choice.
        batch_size: How many texts go through the graph at once.

    Returns:
        One string per input.
    """
    import tensorflow_text  # noqa: F401  (registers the SentencePiece ops)

    path = resolve_version(saved_model_dir)
    loaded = tf.saved_model.load(path)
    if signature not in loaded.signatures:
        raise ValueError(
            f"The SavedModel at {path} has no signature {signature!r}; it has "
            f"{sorted(loaded.signatures)}. Received: signature={signature!r}"
        )
    function = loaded.signatures[signature]
    texts = list(texts)
    outputs: list[str] = []
    for start in range(0, len(texts), batch_size):
        result = function(text=tf.constant(texts[start : start + batch_size], tf.string))
        (values,) = [result["label"]] if "label" in result else result.values()
        outputs += [value.decode("utf-8") for value in values.numpy()]
    return outputs


def resolve_version(saved_model_dir: str | os.PathLike) -> str:
    """A version directory as is; a base directory -> its highest version."""
    path = os.fspath(saved_model_dir)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(
            "Found neither a SavedModel nor numbered versions of one. "
            f"Received: saved_model_dir={path}"
        )
    return os.path.join(path, str(found[-1]))


def verify_saved_model(path: str | os.PathLike) -> set[str]:
    """Checks that no graph or function of a SavedModel uses XLA; returns its op types.

    Walks the graph of every meta graph and every function of its function
    library (while-loop bodies included) and rejects `Xla*` ops and XLA
    compilation attributes (`_XlaMustCompile` and friends).

    Raises:
        ValueError: naming the offending functions and ops.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(os.fspath(path), "saved_model.pb"), "rb") as file:
        saved_model.ParseFromString(file.read())
    op_types: set[str] = set()
    problems: list[str] = []
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        scopes = [("<graph>", graph.node, {})]
        scopes += [(f.signature.name, f.node_def, f.attr) for f in graph.library.function]
        for scope, nodes, function_attrs in scopes:
            problems += [f"{scope}: attr {key}" for key in _xla_attrs(function_attrs)]
            for node in nodes:
                op_types.add(node.op)
                if "xla" in node.op.lower():
                    problems.append(f"{scope}: op {node.op} ({node.name})")
                problems += [f"{scope}: {node.name} attr {k}" for k in _xla_attrs(node.attr)]
    if problems:
        raise ValueError(
            "The SavedModel uses XLA, which TF Serving on CPU may not run: "
            + "; ".join(sorted(set(problems))[:20])
        )
    return op_types


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


def _xla_attrs(attrs) -> list[str]:
    return [key for key in XLA_ATTRIBUTES if key in attrs and attrs[key].b]


def _check_version(version) -> int:
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"`version` must be a positive integer. Received: version={version!r}")
    return version


def _refuse_existing(target: str, version: int) -> None:
    if os.path.lexists(target):
        raise FileExistsError(
            f"{target} exists and versions are never replaced; export a new "
            f"version (leave `version` unset for the next one). Received: version={version}"
        )


def _model_name(model) -> str:
    return str(getattr(model, "name", None) or "dss_model")


def _write_metadata(path: str, model, seq2seq_lm, version: int, stop_at_end_token: bool,
                    label_set: LabelSet | None) -> None:
    """A small JSON beside the graph (TF Serving ignores `assets.extra` content)."""
    import dss_keras

    pre = model.preprocessor
    signatures = {name: {"outputs": {output: "string [None]"}}
                  for name, output in SIGNATURES.items()}
    if label_set is not None:
        signatures[CHOOSE_LABEL] = {"outputs": CHOOSE_LABEL_OUTPUTS}
    for signature in signatures.values():
        signature["inputs"] = {"text": "string [None]"}
    metadata = {
        "dss_keras_version": dss_keras.__version__,
        "version": version,
        "signatures": signatures,
        "precision": precision_of(seq2seq_lm),
        "weight_bytes": weight_bytes(seq2seq_lm),
        "label_set": None if label_set is None else label_set.spec,
        "invalid_utf8": "refused",
        "label_prefix": pre.label_prefix,
        "rationale_prefix": pre.rationale_prefix,
        "max_input_length": pre.max_input_length,
        "max_label_length": pre.max_label_length,
        "max_rationale_length": pre.max_rationale_length,
        "decoder": type(decoding.decoder_for(seq2seq_lm)).__name__,
        "stop_at_end_token": stop_at_end_token,
    }
    os.makedirs(os.path.join(path, "assets.extra"), exist_ok=True)
    write_json(os.path.join(path, METADATA_PATH), metadata)
