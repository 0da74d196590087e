"""Which presets are `transformers` T5 checkpoints, and fetching `hf://` ones from the Hub.

`checkpoint_directory(preset)` answers for a preset string: a local directory whose
`config.json` has a T5-family `model_type` is returned as is; for `hf://owner/name`, the
repository's `config.json` is fetched first, and only a T5-family one is downloaded whole (its
config, safetensors weights and tokenizer files, or its `pytorch_model.bin` when it has no
safetensors) into the Hugging Face cache, whose folder is then read like any local directory.
Anything else gives `None`: it is KerasHub's to load (its own presets, and the `hf://`
checkpoints its converters cover, such as BART).

Downloads go through `huggingface_hub.snapshot_download`, so the cache, `HF_HOME`,
`HF_HUB_OFFLINE=1` and `HF_TOKEN` work as with `transformers`.

Examples:

>>> checkpoint_directory("t5_1.1_base") is None  # a KerasHub preset name
True
"""

from __future__ import annotations

import json
import os

from dss_keras.hf_t5.config import REFUSED_MODEL_TYPES, T5_FAMILY

SCHEME = "hf://"
FILES = ["config.json", "*.safetensors", "model.safetensors.index.json", "spiece.model",
         "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]
PYTORCH_FILES = ["pytorch_model.bin", "pytorch_model*.bin", "pytorch_model.bin.index.json"]


def checkpoint_directory(preset: str) -> str | None:
    """The local folder of a T5-family `transformers` checkpoint, or `None` for other presets.

    Args:
        preset: A local directory, an `hf://owner/name` handle, or any other preset string.

    Returns:
        A directory to give to `dss_keras.hf_t5.load_checkpoint`, or `None`.

    Raises:
        RuntimeError: when an `hf://` handle cannot be fetched, naming it and saying how to
            use a local copy instead.
    """
    if os.path.isdir(preset):
        return preset if _is_t5_family(preset) else None
    if not preset.startswith(SCHEME):
        return None
    repo_id = preset[len(SCHEME):]
    try:
        folder = _snapshot_download(repo_id, ["config.json"])
        if not _is_t5_family(folder):
            return None
        folder = _snapshot_download(repo_id, FILES)
        if not any(name.endswith(".safetensors") for name in os.listdir(folder)):
            folder = _snapshot_download(repo_id, PYTORCH_FILES)
    except (OSError, ValueError) as error:
        raise RuntimeError(
            f"Could not fetch {preset!r} from the Hugging Face Hub: {error}\n"
            "Without a network, download it on a machine that has one "
            f"(`huggingface_hub.snapshot_download({repo_id!r}, local_dir=DIR)`), copy DIR here "
            "and pass its path instead of the handle."
        ) from error
    return folder


def _is_t5_family(directory: str) -> bool:
    """Whether `directory/config.json` is a `transformers` config of a T5-family model."""
    path = os.path.join(directory, "config.json")
    if not os.path.exists(path):
        return False
    try:
        with open(path, encoding="utf-8") as file:
            config = json.load(file)
    except (OSError, ValueError):
        return False
    # KerasHub's own presets have a config.json too, without `model_type`.
    model_type = config.get("model_type") if isinstance(config, dict) else None
    return model_type in T5_FAMILY or model_type in REFUSED_MODEL_TYPES


def _snapshot_download(repo_id: str, patterns: list[str]) -> str:
    from huggingface_hub import snapshot_download

    return snapshot_download(repo_id, allow_patterns=patterns)
