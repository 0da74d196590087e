"""The weight files of a `transformers` checkpoint: read lazily as float32 NumPy, and written.

Read, in this order of preference:

- `model.safetensors`, or shards listed by `model.safetensors.index.json` (with the
  `safetensors` package; no PyTorch needed). float32, float16 and bfloat16 tensors are read as
  float32 (bfloat16 through `ml_dtypes`, which Keras already installs);
- `pytorch_model.bin`, or shards listed by `pytorch_model.bin.index.json`, only when PyTorch
  is installed; otherwise the error gives the command that converts them.

Written: one `model.safetensors` in float32, with the `{"format": "pt"}` metadata that
`transformers` expects.

Examples:

>>> import os, tempfile, numpy as np
>>> directory = tempfile.mkdtemp()
>>> write_safetensors(os.path.join(directory, "model.safetensors"),
...                   {"shared.weight": np.ones((2, 3), "float32")})
>>> weights = CheckpointWeights(directory)
>>> sorted(weights), weights["shared.weight"].shape
(['shared.weight'], (2, 3))
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PYTORCH = "pytorch_model.bin"
PYTORCH_INDEX = "pytorch_model.bin.index.json"
CONVERT_COMMAND = (
    "python -c \"from transformers import AutoModelForSeq2SeqLM as M; "
    "M.from_pretrained('{path}').save_pretrained('{path}')\""
)


class CheckpointWeights(Mapping):
    """The tensors of a checkpoint directory by name; each read (as float32) when asked for.

    Args:
        directory: A directory with safetensors weights (one file or shards and their
            index), or PyTorch `.bin` weights when PyTorch is installed.

    Raises:
        FileNotFoundError: when the directory holds no weights, naming what it looked for.
        ImportError: for `.bin` weights without PyTorch, with the command that converts them.
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = os.fspath(directory)
        self._files = _weight_files(self.directory)
        self._open: dict[str, object] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        path = os.path.join(self.directory, self._files[name])
        if path.endswith(".bin"):
            return _torch_file(path, self._open)[name].float().numpy()
        return _safetensors_file(path, self._open).get_tensor(name).astype(np.float32)

    def __contains__(self, name) -> bool:
        return name in self._files

    def __iter__(self):
        return iter(self._files)

    def __len__(self) -> int:
        return len(self._files)

    def file_of(self, name: str) -> str:
        """The file (relative to the directory) that holds tensor `name`."""
        return self._files[name]


def write_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray]) -> None:
    """Writes float32 `tensors` as a safetensors file that `transformers` loads."""
    from safetensors.numpy import save_file

    arrays = {name: np.ascontiguousarray(value, dtype=np.float32)
              for name, value in tensors.items()}
    save_file(arrays, os.fspath(path), metadata={"format": "pt"})


def _weight_files(directory: str) -> dict[str, str]:
    """Tensor name -> file name, from the first kind of weights the directory has."""
    for single, index in ((SAFETENSORS, SAFETENSORS_INDEX), (PYTORCH, PYTORCH_INDEX)):
        if os.path.exists(os.path.join(directory, index)):
            files = _index(os.path.join(directory, index))
        elif os.path.exists(os.path.join(directory, single)):
            files = None
        else:
            continue
        if single == PYTORCH:
            _require_torch(directory)
        if files is None:
            return {name: single for name in _names(os.path.join(directory, single))}
        return files
    raise FileNotFoundError(
        f"{directory}: no weights; a transformers checkpoint holds {SAFETENSORS} (or shards "
        f"with {SAFETENSORS_INDEX}) or {PYTORCH}. Received: files={sorted(os.listdir(directory))}"
    )


def _index(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as file:
        index = json.load(file)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{path}: expected a non-empty `weight_map` object. "
                         f"Received: weight_map={weight_map!r}")
    directory = os.path.dirname(path)
    for file_name in sorted(set(weight_map.values())):
        if not os.path.exists(os.path.join(directory, file_name)):
            raise FileNotFoundError(f"{path}: a shard it lists is missing. "
                                    f"Received: file={file_name!r}")
    return dict(weight_map)


def _names(path: str) -> list[str]:
    if path.endswith(".bin"):
        return list(_torch_file(path, {}))
    from safetensors import safe_open

    with safe_open(path, framework="numpy") as file:
        return list(file.keys())


def _safetensors_file(path: str, cache: dict):
    if path not in cache:
        import ml_dtypes  # noqa: F401  (gives NumPy the bfloat16 of bf16 checkpoints)
        from safetensors import safe_open

        cache[path] = safe_open(path, framework="numpy")
    return cache[path]


def _torch_file(path: str, cache: dict):
    if path not in cache:
        import torch

        cache[path] = torch.load(path, map_location="cpu", weights_only=True)
    return cache[path]


def _require_torch(directory: str) -> None:
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError(
            f"{directory}: the weights are a PyTorch pickle ({PYTORCH}), which is read with "
            "PyTorch, and PyTorch is not installed. Install it (`pip install torch`), or "
            "convert the weights to safetensors once where transformers and PyTorch are "
            f"installed: {CONVERT_COMMAND.format(path=directory)}. Received: weights={PYTORCH}"
        ) from None
