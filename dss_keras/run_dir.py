"""The run directory: what a training run leaves on disk, and how it resumes.

```
config.json         the resolved TrainConfig
vocabulary.spm      the tiny model's vocabulary (see dss_keras.vocabulary)
backup/             Keras BackupAndRestore state while training (a crash resumes)
logs/               TensorBoard logs
model.keras         the trained DistillStepByStep (weights and optimizer state)
metrics.json        losses, label accuracies, the data report and wall time
```

Running the same config on an existing run directory resumes it (or returns
the finished results); a different config there is an error, never a
deletion.
"""

from __future__ import annotations

import json
import logging
import os

from dss_keras.config import TrainConfig
from dss_keras.files import write_json

logger = logging.getLogger(__name__)

CONFIG = "config.json"
VOCABULARY = "vocabulary.spm"
BACKUP = "backup"
LOGS = "logs"
MODEL = "model.keras"
METRICS = "metrics.json"


def claim(config: TrainConfig) -> None:
    """Makes `config.run_dir` this config's run, or checks that it already is.

    Raises:
        ValueError: when the directory holds a run with another config.
    """
    path = os.path.join(config.run_dir, CONFIG)
    if os.path.exists(path):
        saved = TrainConfig.load(path)
        if saved != config:
            changed = sorted(k for k, v in config.to_dict().items() if saved.to_dict()[k] != v)
            raise ValueError(
                f"{config.run_dir} holds a run with another config (fields "
                f"{', '.join(changed)} differ). Use a new run directory, or the "
                "same config to resume."
            )
        logger.info("Resuming the run in %s", config.run_dir)
        return
    os.makedirs(config.run_dir, exist_ok=True)
    config.save(path)


def load_finished(run_dir: str):
    """`(model, metrics)` of a finished run, or `None`."""
    import keras

    metrics_path, model_path = os.path.join(run_dir, METRICS), os.path.join(run_dir, MODEL)
    if not (os.path.exists(metrics_path) and os.path.exists(model_path)):
        return None
    logger.info("%s is finished; loading its model and metrics", run_dir)
    with open(metrics_path, encoding="utf-8") as f:
        metrics = json.load(f)
    return keras.models.load_model(model_path), metrics


def save_finished(run_dir: str, model, metrics: dict) -> None:
    """Saves the trained model, then the metrics (whose presence marks the end)."""
    model_path = os.path.join(run_dir, MODEL)
    model.save(model_path + ".tmp.keras")
    os.replace(model_path + ".tmp.keras", model_path)
    write_json(os.path.join(run_dir, METRICS), metrics)
