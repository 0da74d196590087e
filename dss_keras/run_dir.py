"""The run directory: what a training run leaves on disk, and how it resumes.

```
config.json         the resolved TrainConfig (paths absolute)
vocabulary.spm      the tiny model's vocabulary (see dss_keras.vocabulary)
train.lock          while a process trains here: its process id (dss_keras.run_lock)
backup/             two generations of training state while training, the last one
                    after (dss_keras.backup)
logs/               TensorBoard logs
model.keras         the trained DistillStepByStep (weights and optimizer state)
metrics.json        losses, label accuracies, the data report and wall time
```

A run directory is claimed (its `config.json` written) only once the data
has been read and checked. Running the same config on it again resumes the
run from its last backup, or returns the finished results. A different
config is refused once training has started there; a directory that holds
nothing but a claim (training never finished an evaluation period) is taken
over by the new config. Nothing is deleted but such an abandoned claim, and
the temporary files of writes that died.

The last backup generation is kept after the run finishes: a damaged
`model.keras` is rebuilt from it, without training, by running the same
config again (`load_finished`). Readers of a run (`load_model`) say what is
wrong when there is no model to load: still training, stopped before the
end, or a damaged file, and what to do about it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile

from dss_keras import run_lock
from dss_keras.backup import Backup
from dss_keras.config import TrainConfig
from dss_keras.files import (
    check_room,
    remove_abandoned_staging,
    reporting_full_disk,
    write_json,
    writing,
)

logger = logging.getLogger(__name__)

CONFIG = "config.json"
VOCABULARY = "vocabulary.spm"
BACKUP = "backup"
LOGS = "logs"
MODEL = "model.keras"
METRICS = "metrics.json"

NEW, RESUME, FINISHED = "new", "resume", "finished"
# What to do after a failure at the end of a run, or with a damaged model and no backup.
_REBUILD_HINT = ("rerun the same command: it resumes from the last backup, which holds the "
                 "trained model")
_NO_BACKUP_HINT = ("The run kept no backup to rebuild it from: train it again, with the same "
                   "command and another --run-dir.")


class DamagedModelError(ValueError):
    """A `model.keras` that exists but cannot be loaded because its file is damaged."""


def _started(run_dir: str) -> bool:
    """Whether training there finished a period (a backup) or the whole run."""
    return bool(Backup(os.path.join(run_dir, BACKUP)).generations()) or any(
        os.path.exists(os.path.join(run_dir, name)) for name in (MODEL, METRICS))


def status(config: TrainConfig) -> str:
    """`NEW`, `RESUME` or `FINISHED`: what `config.run_dir` holds for `config`.

    Raises:
        ValueError: when the path is not a directory, or holds a started run
            with another (or an unreadable) config.
    """
    run_dir = config.run_dir
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: is a file, not a run directory; pass another --run-dir.")
    path = os.path.join(run_dir, CONFIG)
    if not os.path.exists(path):
        if _started(run_dir):
            raise ValueError(f"{run_dir}: holds a run without its {CONFIG}; use a new run "
                             "directory.")
        return NEW
    try:
        saved = TrainConfig.load(path).resolved()
    except (ValueError, TypeError, KeyError) as error:  # JSON errors are ValueErrors
        if _started(run_dir):
            raise ValueError(f"{path}: unreadable ({error}); use a new run directory.") from None
        return NEW
    if saved != config:
        if not _started(run_dir):
            return NEW  # an abandoned claim: taken over
        changed = sorted(k for k, v in config.to_dict().items() if saved.to_dict()[k] != v)
        raise ValueError(
            f"{run_dir} holds a run with another config (fields {', '.join(changed)} "
            "differ). Use a new run directory, or the same config to resume."
        )
    if all(os.path.exists(os.path.join(run_dir, n)) for n in (MODEL, METRICS)):
        return FINISHED
    return RESUME


def claim(config: TrainConfig) -> None:
    """Makes `config.run_dir` this config's run (call once the data is checked).

    A claim of another config that never started training is replaced, with
    the vocabulary and logs it left.
    """
    run_state = status(config)
    os.makedirs(config.run_dir, exist_ok=True)
    remove_abandoned_staging(config.run_dir)
    path = os.path.join(config.run_dir, CONFIG)
    if run_state == RESUME:
        logger.info("Resuming the run in %s", config.run_dir)
        return
    if os.path.exists(path):
        logger.warning("%s held an abandoned claim of another config; taking it over",
                       config.run_dir)
        for name in (VOCABULARY, LOGS, BACKUP):
            target = os.path.join(config.run_dir, name)
            if os.path.isdir(target):
                shutil.rmtree(target)
            elif os.path.exists(target):
                os.remove(target)
    config.save(path)


def load_finished(run_dir: str):
    """`(model, metrics)` of a finished run.

    A damaged `model.keras` is rebuilt from the backup generation the run
    kept (no training: it holds the trained model).

    Raises:
        DamagedModelError: when `model.keras` is damaged and no sound backup
            was kept.
    """
    logger.info("%s is finished; loading its model and metrics", run_dir)
    with open(os.path.join(run_dir, METRICS), encoding="utf-8") as f:
        metrics = json.load(f)
    path = os.path.join(run_dir, MODEL)
    try:
        return _load(path), metrics
    except DamagedModelError as error:
        kept = Backup(os.path.join(run_dir, BACKUP)).newest_model()
        if kept is None:
            raise DamagedModelError(f"{error}. {_NO_BACKUP_HINT}") from None
        logger.warning("%s; rebuilding it from %s", error, os.path.dirname(kept))
    remove_abandoned_staging(run_dir)
    with reporting_full_disk(run_dir, MODEL, "rerun the same command"):
        with writing(path, suffix=".keras") as tmp:
            shutil.copyfile(kept, tmp)
    return _load(path), metrics


def save_finished(run_dir: str, model, metrics: dict) -> None:
    """Saves the trained model, then the metrics (whose presence marks the end).

    Of the backup, only the newest generation is kept: `model.keras` can be
    rebuilt from it.

    Raises:
        OSError: naming the run directory, when the disk has no room for
            `model.keras`.
    """
    backup = Backup(os.path.join(run_dir, BACKUP))
    backup.prune(1)
    check_room(run_dir, backup.needed_bytes(model), MODEL, _REBUILD_HINT)
    with reporting_full_disk(run_dir, MODEL, _REBUILD_HINT):
        with writing(os.path.join(run_dir, MODEL), suffix=".keras") as tmp:
            model.save(tmp)
        write_json(os.path.join(run_dir, METRICS), metrics)


def damage(path: str) -> str | None:
    """Why the file at `path` is not a whole `.keras` archive; `None` when it is one.

    Examples:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
    >>> open(path, "wb").close()
    >>> damage(path)
    'empty'
    >>> _ = open(path, "wb").write(b"PK\\x03\\x04 and then nothing")
    >>> damage(path)
    'not a whole .keras archive: 21 bytes, cut short?'
    """
    size = os.path.getsize(path)
    if size == 0:
        return "empty"
    if not zipfile.is_zipfile(path):
        return f"not a whole .keras archive: {size} bytes, cut short?"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError) as error:
        return f"not a readable .keras archive: {error}"
    return f"its part {bad} does not match its checksum" if bad else None


def _load(path: str):
    """The model in the `.keras` file at `path`; `DamagedModelError` when the file is damaged."""
    import keras

    import dss_keras.model  # noqa: F401  (registers the classes)

    try:
        return keras.models.load_model(path)
    except Exception as error:  # Keras reports a damaged archive in many ways.
        reason = damage(path)
        if reason is None:
            raise
        raise DamagedModelError(f"{path}: damaged ({reason})") from error


def load_model(path: str):
    """The trained model of a run directory (or of a `.keras` file), for the commands that use one.

    Raises:
        FileNotFoundError: when there is no model, saying why: the run is
            still training, stopped before it finished, or never trained.
        DamagedModelError: when the model file is damaged, saying how to
            recover it.
    """
    run_dir = os.path.dirname(path) if path.endswith(".keras") else path
    if not path.endswith(".keras"):
        path = os.path.join(run_dir, MODEL)
    if not os.path.exists(path):
        raise FileNotFoundError(_why_no_model(run_dir, path))
    try:
        return _load(path)
    except DamagedModelError as error:
        raise DamagedModelError(f"{error}. {_how_to_recover(run_dir, path)}") from None


def _why_no_model(run_dir: str, path: str) -> str:
    holder = run_lock.holder(run_dir)
    if holder is not None:
        return (f"{run_dir}: still training ({holder}); its {MODEL} is written when training "
                "ends. Wait for it to finish.")
    generations = Backup(os.path.join(run_dir, BACKUP)).generations()
    if generations and os.path.exists(os.path.join(run_dir, CONFIG)):
        return (f"{run_dir}: training stopped before it finished (last backup: "
                f"{os.path.basename(generations[0])}); rerun the `dss-keras train` command "
                "that started it to resume.")
    return f"{path}: no trained model here; train one with `dss-keras train`."


def _how_to_recover(run_dir: str, path: str) -> str:
    if os.path.basename(path) != MODEL or not os.path.exists(os.path.join(run_dir, CONFIG)):
        return "Save or copy the model there again."
    if run_lock.holder(run_dir) is not None:
        return "A process is training in this run directory: wait for it to finish."
    if Backup(os.path.join(run_dir, BACKUP)).newest_model() is not None:
        return (f"The run kept its last backup: rerun the `dss-keras train` command that "
                f"trained it (settings in {os.path.join(run_dir, CONFIG)}) to rebuild "
                f"{MODEL} from it without training.")
    return _NO_BACKUP_HINT
