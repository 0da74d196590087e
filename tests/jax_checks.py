"""The JAX side of `tests/test_jax_backend.py`, run in a subprocess (Keras picks its backend once).

    XLA_FLAGS=--xla_force_host_platform_device_count=2 KERAS_BACKEND=jax \
        python tests/jax_checks.py WORKDIR

reads what the TensorFlow side wrote into WORKDIR (`batches.npz`, the
batches; `initial.weights.h5`, the tiny model's first weights; `settings.json`)
and writes `jax.json` and `jax.npz`:

- the loss, each task's token statistics and every gradient of the first batch;
- the weights and per-step losses after training on all batches with the
  authors' optimizer, on one device and under `keras.distribution.DataParallel`
  over the two host devices;
- the losses of a few `mixed_bfloat16` steps;
- how often the train step was traced over batches of bounded shapes, and how
  many shapes those batches had;
- `jax_model.keras`, the trained model, with its greedy labels of a few texts.
"""

from __future__ import annotations

import json
import os
import sys

SETTINGS = "settings.json"


def _batches(workdir: str) -> list:
    """The batches written by the TensorFlow side: `(x, y, sample_weight)` of NumPy arrays."""
    import numpy as np

    arrays = np.load(os.path.join(workdir, "batches.npz"))
    steps = arrays["label/y"].shape[0]
    tasks = sorted({key.split("/")[0] for key in arrays.files})
    batches = []
    for step in range(steps):
        x = {task: {key.split("/")[2]: arrays[key][step] for key in arrays.files
                    if key.startswith(f"{task}/x/")} for task in tasks}
        y = {task: arrays[f"{task}/y"][step] for task in tasks}
        w = {task: arrays[f"{task}/w"][step] for task in tasks}
        batches.append((x, y, w))
    return batches


def _model(settings: dict, dtype=None):
    from dss_keras import backbones, testing
    from dss_keras.model import DistillStepByStep

    lm = backbones.tiny_t5(proto=testing.toy_vocabulary(), dtype=dtype, **settings["shape"])
    return DistillStepByStep(lm, **settings["model"])


def _trained(settings: dict, batches: list, workdir: str, strategy_name: str = "default"):
    """A model from the initial weights, trained on `batches` (one step each)."""
    from dss_keras import strategies
    from dss_keras.config import TrainConfig
    from dss_keras.training import make_optimizer

    strategy = strategies.make_strategy(strategy_name)
    with strategy.scope():
        model = _model(settings)
        model.load_weights(os.path.join(workdir, "initial.weights.h5"))
        model.compile(optimizer=make_optimizer(TrainConfig(**settings["optimizer"])))
    history = model.fit((b for b in batches), epochs=len(batches), steps_per_epoch=1, verbose=0)
    return model, history.history["loss"]


def _losses_and_gradients(settings: dict, batch) -> tuple[dict, dict]:
    import jax
    import numpy as np

    from dss_keras import objective

    model = _model(settings)
    model.load_weights(os.path.join(settings["workdir"], "initial.weights.h5"))
    x, y, w = batch
    state = ([v.value for v in model.non_trainable_variables],
             [v.value for v in model.metrics_variables])

    def loss(trainable):
        value, _ = model.compute_loss_and_updates(trainable, *state, x, y, w, training=False)
        return value

    value, gradients = jax.value_and_grad(loss)([v.value for v in model.trainable_variables])
    logits = model(x, training=False)
    statistics = {task: [float(s) for s in objective.task_statistics(
        *objective.token_losses(logits[task], y[task]), w[task])] for task in model.tasks}
    arrays = {f"gradient/{i}": np.asarray(g) for i, g in enumerate(gradients)}
    return {"loss": float(value), "statistics": statistics}, arrays


def _bounded_shapes(settings: dict) -> dict:
    """Traces of the train step over 24 batches of `make_dataset(bounded_shapes=True)`."""
    import keras

    from dss_keras import testing
    from dss_keras.data import make_dataset

    model = _model(settings)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    traces = []
    step = model.train_step

    def counted(*args):
        traces.append(1)
        return step(*args)

    model.train_step = counted
    dataset, _ = make_dataset(testing.toy_records(200), model.preprocessor, batch_size=8,
                              repeat=True, drop_remainder=True, bounded_shapes=True)
    batches = list(dataset.take(24).as_numpy_iterator())
    shapes = {tuple(array.shape for task in sorted(b[0]) for array in b[0][task].values())
              for b in batches}
    model.fit((b for b in batches), epochs=1, steps_per_epoch=len(batches), verbose=0)
    return {"traces": len(traces), "shapes": len(shapes), "batches": len(batches)}


def main(workdir: str) -> None:
    import keras
    import numpy as np

    with open(os.path.join(workdir, SETTINGS)) as file:
        settings = json.load(file)
    settings["workdir"] = workdir
    batches = _batches(workdir)
    results, arrays = _losses_and_gradients(settings, batches[0])
    results["devices"] = len(keras.distribution.list_devices())

    model, results["losses"] = _trained(settings, batches, workdir)
    arrays.update({f"weight/{i}": np.asarray(v.value)
                   for i, v in enumerate(model.trainable_variables)})
    results["shapes"] = [list(v.shape) for v in model.trainable_variables]
    model.save(os.path.join(workdir, "jax_model.keras"))
    results["labels"] = model.predict_labels(settings["texts"])

    bf16 = _model(settings, dtype="mixed_bfloat16")
    bf16.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = bf16.fit((b for b in batches[:6]), epochs=6, steps_per_epoch=1, verbose=0)
    results["bfloat16"] = {"losses": history.history["loss"],
                           "compute_dtype": bf16.seq2seq_lm.backbone.compute_dtype}
    results["bounded_shapes"] = _bounded_shapes(settings)

    # Last: it sets the process's distribution.
    parallel, results["data_parallel_losses"] = _trained(settings, batches, workdir, "mirrored")
    arrays.update({f"data_parallel/{i}": np.asarray(v.value)
                   for i, v in enumerate(parallel.trainable_variables)})
    results["data_parallel_devices"] = len(keras.distribution.distribution().device_mesh.devices)
    np.savez(os.path.join(workdir, "jax.npz"), **arrays)
    with open(os.path.join(workdir, "jax.json"), "w") as file:
        json.dump(results, file)


if __name__ == "__main__":
    main(sys.argv[1])
