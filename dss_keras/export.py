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
predict` does; the test is Python's (`bytes.decode("utf-8")`). The weights are
exported at a chosen precision (`dss_keras.export_precision`: float32,
bfloat16 or int8), recorded with the signatures in
`assets.extra/dss_keras.json`. The traced object is
`dss_keras.serving_module.ServingModule`.

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
from dss_keras.label_scorer import LabelSet
from dss_keras.serving_module import (CHOOSE_LABEL, CHOOSE_LABEL_OUTPUTS, SIGNATURES,
                                      GraphSentencePiece, ServingModule, valid_utf8)
from dss_keras.tf_fast_path.lean_t5 import keras_hub_t5_layers

__all__ = ["GraphSentencePiece", "ServingModule", "export_for_serving", "load_and_predict",
           "next_version", "resolve_version", "valid_utf8", "verify_saved_model", "versions"]

METADATA_PATH = os.path.join("assets.extra", "dss_keras.json")
# Attributes that make TensorFlow compile a function or a cluster with XLA.
XLA_ATTRIBUTES = ("_XlaMustCompile", "_XlaCompile", "_XlaScope")


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
