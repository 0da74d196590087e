"""A KerasHub `T5Seq2SeqLM` (or a trained `DistillStepByStep`) -> a `transformers` T5 checkpoint.

The directory written holds what `transformers.AutoModelForSeq2SeqLM.from_pretrained` and
`AutoTokenizer.from_pretrained` read:

```
config.json                 T5ForConditionalGeneration, model_type t5; for a trained student,
                            task_specific_params give its task prefixes and target lengths
model.safetensors           every weight, float32
spiece.model                the SentencePiece model
tokenizer_config.json       T5Tokenizer, special tokens, sentinels for the spare rows
special_tokens_map.json
```

`export_for_transformers(model)` writes a trained student to `saved_models/<name>/hf/`, beside
the SavedModel versions of `dss_keras.export` (`saved_models/<name>/<version>/`; TF Serving reads
only the numbered folders). A checkpoint is written whole or not at all (into a staging folder,
then renamed) and never replaces an existing directory.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from dss_keras.export import _model_name
from dss_keras.files import remove_abandoned_staging, staging_dir, write_json
from dss_keras.hf_t5 import layout
from dss_keras.hf_t5.config import checkpoint_config
from dss_keras.hf_t5.tokenizer import write_tokenizer
from dss_keras.hf_t5.weights import SAFETENSORS, write_safetensors

EXPORT_FOLDER = "hf"


def save_checkpoint(
    seq2seq_lm,
    directory: str | os.PathLike,
    *,
    tokenizer=None,
    extra_config: dict | None = None,
) -> str:
    """Writes a KerasHub `T5Seq2SeqLM` as a `transformers` T5 checkpoint.

    Args:
        seq2seq_lm: A `keras_hub.models.T5Seq2SeqLM` (its backbone may carry
            `dss_keras.lean_t5` layers).
        directory: The checkpoint directory to create; it must not exist.
        tokenizer: The SentencePiece tokenizer; defaults to the model's preprocessor's.
        extra_config: More `config.json` fields (e.g. `task_specific_params`).

    Returns:
        `directory`, as a string.

    Raises:
        FileExistsError: when `directory` exists.
        ValueError: for a model that is not a T5, an activation `transformers` cannot
            express, or a tokenizer that is not SentencePiece.

    Examples:

    >>> import os, tempfile
    >>> from dss_keras import testing
    >>> path = save_checkpoint(testing.tiny_seq2seq_lm(), tempfile.mkdtemp() + "/student")
    >>> sorted(os.listdir(path))  # doctest: +NORMALIZE_WHITESPACE
    ['config.json', 'model.safetensors', 'special_tokens_map.json', 'spiece.model',
     'tokenizer_config.json']
    """
    import keras_hub

    backbone = getattr(seq2seq_lm, "backbone", None)
    if not isinstance(backbone, keras_hub.models.T5Backbone):
        raise ValueError("A transformers T5 checkpoint is written from a T5 model. "
                         f"Received: backbone={type(backbone).__name__}")
    if tokenizer is None:
        tokenizer = getattr(getattr(seq2seq_lm, "preprocessor", None), "tokenizer", None)
    if tokenizer is None:
        raise ValueError("A checkpoint needs the model's tokenizer: pass `tokenizer` for a "
                         "model without a preprocessor. Received: preprocessor=None")
    config = checkpoint_config(backbone.get_config(), pad_token_id=tokenizer.pad_token_id,
                               eos_token_id=tokenizer.end_token_id, extra=extra_config)
    tensors = {weight.name: _array(weight) for weight in layout.weight_table(backbone)}
    return _write_whole(os.fspath(directory), lambda staging: (
        write_safetensors(os.path.join(staging, SAFETENSORS), tensors),
        write_json(os.path.join(staging, "config.json"), config),
        write_tokenizer(staging, tokenizer, backbone.vocabulary_size),
    ))


def export_for_transformers(
    model,
    export_dir: str | os.PathLike | None = None,
    *,
    name: str | None = None,
) -> str:
    """Writes a trained student as a `transformers` checkpoint in `<export_dir>/hf`.

    Args:
        model: A `DistillStepByStep` around a T5 (or any object with `seq2seq_lm` and
            `preprocessor` attributes).
        export_dir: The model's base directory, as for `dss_keras.export.export_for_serving`;
            defaults to `saved_models/<name>`.
        name: The base directory's name when `export_dir` is not given; defaults to the
            model's `name`.

    Returns:
        The checkpoint directory, `<export_dir>/hf`.

    Raises:
        FileExistsError: when `<export_dir>/hf` exists (checkpoints are never replaced).
    """
    base = os.fspath(export_dir or os.path.join("saved_models", name or _model_name(model)))
    pre = model.preprocessor
    tasks = {"label": (pre.label_prefix, pre.max_label_length),
             "rationale": (pre.rationale_prefix, pre.max_rationale_length)}
    params = {task: {"prefix": prefix, "max_length": length}
              for task, (prefix, length) in tasks.items()}
    return save_checkpoint(model.seq2seq_lm, os.path.join(base, EXPORT_FOLDER),
                           tokenizer=pre.tokenizer,
                           extra_config={"task_specific_params": params})


def _array(weight: layout.Weight) -> np.ndarray:
    value = np.asarray(weight.variable.numpy(), dtype=np.float32)
    return value.T if weight.transposed else value


def _write_whole(directory: str, write) -> str:
    """Runs `write(staging)` into a staging folder beside `directory`, then renames it."""
    if os.path.lexists(directory):
        raise FileExistsError(f"{directory} exists; a checkpoint is never written over "
                              f"another. Received: directory={directory}")
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    remove_abandoned_staging(parent)
    staging = staging_dir(parent, os.path.basename(directory).replace("-", "_"))
    try:
        write(staging)
        os.chmod(staging, 0o755)
        if os.path.lexists(directory):  # written meanwhile: rename would replace an empty one
            raise FileExistsError(f"{directory} appeared while writing the checkpoint. "
                                  f"Received: directory={directory}")
        os.rename(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory
