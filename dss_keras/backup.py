"""Crash-safe training state: two generations, each written whole or not at all.

A run backs up its state after every evaluation period (an "epoch" of
`eval_every` steps) into `backup/`:

```
backup/
  epoch-000002/   the previous generation
    model.weights.h5   weights and optimizer state
    state.json         epoch, the history so far, train seconds, the weights' SHA-256
  epoch-000003/   the newest generation
```

A generation is written into a temporary directory and renamed into place,
so a kill at any moment leaves either the new generation or none of it; the
older of the two kept generations is removed only after the new one is in
place. On restart the newest generation whose `state.json` reads and whose
weights match their checksum and load is restored; a torn one is reported
and skipped in favour of the one before.

Unlike Keras' `BackupAndRestore`, which rewrites its files in place, no file
is ever overwritten.

Examples:

>>> import tempfile
>>> backup = Backup(tempfile.mkdtemp())
>>> backup.generations()
[]
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time

import keras

from dss_keras.files import remove_abandoned_staging, staging_dir, write_json

logger = logging.getLogger(__name__)

WEIGHTS = "model.weights.h5"
STATE = "state.json"
_PREFIX = "epoch-"
KEEP = 2


@dataclasses.dataclass
class BackupState:
    """What a generation holds besides the weights.

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

    def _read_state(self, generation: str) -> BackupState:
        with open(os.path.join(generation, STATE), encoding="utf-8") as f:
            data = json.load(f)
        if _sha256(os.path.join(generation, WEIGHTS)) != data["weights_sha256"]:
            raise ValueError(f"{WEIGHTS} does not match its checksum")
        return BackupState(int(data["epoch"]), data["history"], float(data["train_seconds"]))

    def restore(self, model: keras.Model) -> BackupState | None:
        """Loads the newest sound generation into `model`; `None` when there is none.

        A generation that cannot be read is reported (a warning naming it and
        why) and the one before it is tried.
        """
        for generation in self.generations():
            try:
                state = self._read_state(generation)
                if model.optimizer is not None and not model.optimizer.built:
                    model.optimizer.build(model.trainable_variables)
                model.load_weights(os.path.join(generation, WEIGHTS))
            except Exception as error:  # A torn file can fail in many ways.
                logger.warning("Skipping the damaged backup %s (%s: %s)", generation,
                               type(error).__name__, error)
                continue
            logger.info("Resuming from %s (epoch %d)", generation, state.epoch)
            return state
        return None

    def save(self, model: keras.Model, state: BackupState) -> str:
        """Writes a new generation, then drops all but the newest `KEEP`."""
        os.makedirs(self.directory, exist_ok=True)
        remove_abandoned_staging(self.directory)
        staging = staging_dir(self.directory, f"{state.epoch:06d}")
        weights = os.path.join(staging, WEIGHTS)
        model.save_weights(weights)
        with open(weights, "rb+") as f:
            os.fsync(f.fileno())
        write_json(os.path.join(staging, STATE), {
            **dataclasses.asdict(state), "weights_sha256": _sha256(weights),
            "saved_at": time.time(),
        })
        target = os.path.join(self.directory, f"{_PREFIX}{state.epoch:06d}")
        if os.path.exists(target):  # a period redone after a damaged newer generation
            shutil.rmtree(target)
        os.rename(staging, target)
        for old in self.generations()[KEEP:]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def remove(self) -> None:
        """Deletes the whole backup (once the run is finished and saved)."""
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
