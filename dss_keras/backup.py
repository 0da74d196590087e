"""Crash-safe training state: two generations, each written whole or not at all.

A run backs up its state after every evaluation period (an "epoch" of
`eval_every` steps) into `backup/`:

```
backup/
  epoch-000002/   the previous generation
    model.keras        the whole model: config, weights and optimizer state
    state.json         epoch, the history so far, train seconds, the model file's SHA-256
  epoch-000003/   the newest generation
```

A generation is written into a temporary directory and renamed into place,
so a kill at any moment leaves either the new generation or none of it; the
older of the two kept generations is removed only after the new one is in
place. On restart the newest generation whose `state.json` reads and whose
model file matches its checksum and loads is restored; a torn one is reported
and skipped in favour of the one before. (Generations written before the
model file, with `model.weights.h5`, are restored the same way.)

A full disk never crashes the process: the room a generation needs (the size
of the last one, or an estimate from the variables) is checked before it is
written, and the model goes through Keras' `.keras` writer, whose HDF5 part
is built in memory when it fits there, so that a write that still fails is an
`OSError` of Python's own file I/O, never a failure inside HDF5 (which h5py
cannot recover from). Either way the error names the backup directory and
what to do, and the failed generation's folder is removed.

Unlike Keras' `BackupAndRestore`, which rewrites its files in place, no file
is ever overwritten.

Examples:

>>> import tempfile
>>> backup = Backup(tempfile.mkdtemp())
>>> backup.generations(), backup.newest_model() is None
([], True)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time

import keras

from dss_keras.files import (
    check_room,
    remove_abandoned_staging,
    reporting_full_disk,
    staging_dir,
    write_json,
)

logger = logging.getLogger(__name__)

MODEL = "model.keras"
WEIGHTS = "model.weights.h5"  # the model file of generations written before MODEL
STATE = "state.json"
_PREFIX = "epoch-"
KEEP = 2
RESUME_HINT = "rerun the same command: it resumes from the last backup"


@dataclasses.dataclass
class BackupState:
    """What a generation holds besides the model.

    Attributes:
        epoch: Evaluation periods finished.
        history: The Keras logs of every finished period, by key.
        train_seconds: Training wall time over all of those periods.
    """

    epoch: int
    history: dict[str, list[float]]
    train_seconds: float


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _itemsize(dtype) -> int:
    """Bytes per element of a Keras dtype name ("float32", "bfloat16", ...)."""
    bits = re.search(r"(\d+)$", str(getattr(dtype, "name", dtype)))
    return max(1, int(bits.group(1)) // 8) if bits else 4


def estimated_size(model: keras.Model) -> int:
    """Bytes a generation of `model` takes on disk, estimated from its variables.

    Examples:

    >>> layer = keras.layers.Dense(4)
    >>> layer.build((None, 256))
    >>> estimated_size(layer) > 4 * (256 * 4 + 4)
    True
    """
    variables = list(model.weights)
    optimizer = getattr(model, "optimizer", None)
    if optimizer is not None:
        variables += list(optimizer.variables)
    data = sum(math.prod(v.shape) * _itemsize(v.dtype) for v in variables)
    # HDF5 and zip entries per variable, the config and the assets (a vocabulary).
    return int(data * 1.05) + 2048 * len(variables) + (512 << 10)


class Backup:
    """The generations of one run's backup directory.

    Args:
        directory: The backup directory (created when first written).
    """

    def __init__(self, directory: str):
        self.directory = directory

    def generations(self) -> list[str]:
        """Generation directories, newest first."""
        if not os.path.isdir(self.directory):
            return []
        names = [n for n in os.listdir(self.directory)
                 if n.startswith(_PREFIX) and n[len(_PREFIX):].isdigit()]
        return [os.path.join(self.directory, n) for n in sorted(names, reverse=True)]

    def _read_state(self, generation: str) -> tuple[BackupState, str]:
        """The generation's state and its checked model file."""
        with open(os.path.join(generation, STATE), encoding="utf-8") as f:
            data = json.load(f)
        name, key = (MODEL, "model_sha256") if "model_sha256" in data else (
            WEIGHTS, "weights_sha256")
        path = os.path.join(generation, name)
        if _sha256(path) != data[key]:
            raise ValueError(f"{name} does not match its checksum")
        state = BackupState(int(data["epoch"]), data["history"], float(data["train_seconds"]))
        return state, path

    def restore(self, model: keras.Model) -> BackupState | None:
        """Loads the newest sound generation into `model`; `None` when there is none.

        A generation that cannot be read is reported (a warning naming it and
        why) and the one before it is tried.
        """
        for generation in self.generations():
            try:
                state, path = self._read_state(generation)
                if model.optimizer is not None and not model.optimizer.built:
                    model.optimizer.build(model.trainable_variables)
                model.load_weights(path)
            except Exception as error:  # A torn file can fail in many ways.
                logger.warning("Skipping the damaged backup %s (%s: %s)", generation,
                               type(error).__name__, error)
                continue
            logger.info("Resuming from %s (epoch %d)", generation, state.epoch)
            return state
        return None

    def newest_model(self) -> str | None:
        """The `model.keras` of the newest sound generation (checksum verified), if any."""
        for generation in self.generations():
            try:
                _, path = self._read_state(generation)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if path.endswith(MODEL):
                return path
        return None

    def needed_bytes(self, model: keras.Model) -> int:
        """The room a new generation needs: the newest one's size, else an estimate."""
        for generation in self.generations():
            try:
                sizes = [os.path.getsize(os.path.join(generation, n))
                         for n in os.listdir(generation)]
            except OSError:
                continue
            return int(sum(sizes) * 1.02) + (64 << 10)
        return estimated_size(model)

    def save(self, model: keras.Model, state: BackupState) -> str:
        """Writes a new generation, then drops all but the newest `KEEP`.

        Raises:
            OSError: naming the backup directory, when there is no room for
                the generation (nothing is left of it; the older ones stay).
        """
        os.makedirs(self.directory, exist_ok=True)
        remove_abandoned_staging(self.directory)
        what = f"the backup of epoch {state.epoch}"
        check_room(self.directory, self.needed_bytes(model), what, RESUME_HINT)
        staging = staging_dir(self.directory, f"{state.epoch:06d}")
        try:
            with reporting_full_disk(self.directory, what, RESUME_HINT):
                path = os.path.join(staging, MODEL)
                model.save(path)
                with open(path, "rb+") as f:
                    os.fsync(f.fileno())
                write_json(os.path.join(staging, STATE), {
                    **dataclasses.asdict(state), "model_sha256": _sha256(path),
                    "saved_at": time.time(),
                })
            target = os.path.join(self.directory, f"{_PREFIX}{state.epoch:06d}")
            if os.path.exists(target):  # a period redone after a damaged newer generation
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        self.prune(KEEP)
        return target

    def prune(self, keep: int) -> None:
        """Removes all but the newest `keep` generations."""
        for old in self.generations()[keep:]:
            shutil.rmtree(old, ignore_errors=True)

    def remove(self) -> None:
        """Deletes the whole backup."""
        shutil.rmtree(self.directory, ignore_errors=True)


class BackupCallback(keras.callbacks.Callback):
    """Saves a generation at the end of every epoch, with the history so far.

    Args:
        backup: Where the generations go.
        restored: The state training resumes from, if any: its history and
            train seconds are carried on.
        write: Whether this process writes the generations (under a
            multi-worker strategy only the chief does; the others keep the
            history only).
    """

    def __init__(self, backup: Backup, restored: BackupState | None = None, write: bool = True):
        super().__init__()
        self.backup = backup
        self.write = write
        self.restored_history = {k: list(v) for k, v in
                                 (restored.history if restored else {}).items()}
        self.previous_seconds = restored.train_seconds if restored else 0.0
        self._epoch_logs: list[dict] = []
        self._start = None

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        # Keras hands every callback the same dict: callbacks that run after this one
        # can still add to it, and `history` reads it when asked.
        self._epoch_logs.append(logs if logs is not None else {})
        if self.write:
            self.backup.save(self.model, BackupState(epoch + 1, self.history, self.train_seconds))

    @property
    def history(self) -> dict[str, list[float]]:
        """The logs of every period so far, those before a resume included."""
        history = {k: list(v) for k, v in self.restored_history.items()}
        for logs in self._epoch_logs:
            for key, value in logs.items():
                history.setdefault(key, []).append(float(value))
        return history

    @property
    def train_seconds(self) -> float:
        """Training wall time so far, over every resume."""
        running = time.perf_counter() - self._start if self._start is not None else 0.0
        return self.previous_seconds + running
