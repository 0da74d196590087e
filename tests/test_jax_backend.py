"""The same model on JAX: equal losses, gradients and training; DataParallel; bf16; interchange.

Keras picks its backend once per process, so the JAX side runs in a
subprocess (`tests/jax_checks.py`, with two host devices for
`keras.distribution.DataParallel`) on batches, weights and settings this
TensorFlow process writes; the TensorFlow side here trains with its fast path
(`dss_keras.tf_fast_path`), the default.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("jax")  # the dev extras' CPU wheel

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
STEPS, BATCH = 20, 8
SETTINGS = {
    "shape": dict(hidden_dim=32, num_layers=2, num_heads=2, intermediate_dim=64),
    "model": dict(max_input_length=48, max_label_length=4, max_rationale_length=16),
    # The authors' optimizer: linear decay, clipping at global norm 1.0, epsilon 1e-8.
    "optimizer": dict(learning_rate=3e-3, lr_schedule="linear", steps=STEPS, eval_every=STEPS,
                      adam_epsilon=1e-8, adam_epsilon_placement="pytorch",
                      clip_global_norm=1.0),
    "texts": ["Ana has 3 cups. Then Ana finds 2 more. How many cups does Ana have now?",
              "Gus has 9 rocks. Then Gus lends 4 to Dee. How many rocks does Gus have now?"],
}


def jax_environment(**extra) -> dict:
    """This environment with Keras on JAX, TensorFlow's logs off, the package importable."""
    path = os.pathsep.join([ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    return {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONPATH": path, "JAX_PLATFORMS": "cpu", **extra}


def _model():
    from dss_keras import backbones, testing
    from dss_keras.model import DistillStepByStep

    lm = backbones.tiny_t5(proto=testing.toy_vocabulary(), **SETTINGS["shape"])
    return DistillStepByStep(lm, **SETTINGS["model"])


def _padded_batches(model) -> list:
    """`STEPS` batches, each padded to the length budgets (one shape: one XLA compilation)."""
    from dss_keras import testing
    from dss_keras.data import make_dataset

    records = testing.toy_records(64, seed=3)
    # A few examples without a rationale: their rationale weights are all zero.
    records = [r if i % 5 else dataclasses.replace(r, rationale=None)
               for i, r in enumerate(records)]
    dataset, _ = make_dataset(records, model.preprocessor, batch_size=BATCH, seed=0,
                              repeat=True, bucket_boundaries=[], drop_remainder=True)
    pre = model.preprocessor
    lengths = {"encoder": pre.max_input_length}
    batches = []
    for x, y, w in dataset.take(STEPS).as_numpy_iterator():
        def pad(array, side, task, value=0):
            length = lengths.get(side) or pre.max_target_length(task)
            return np.pad(array, [(0, 0), (0, length - array.shape[1])], constant_values=value)

        x = {task: {key: pad(value, key.split("_")[0], task,
                             pre.pad_token_id if key.endswith("ids") else 0)
                    for key, value in inputs.items()} for task, inputs in x.items()}
        y = {task: pad(value, "decoder", task, pre.pad_token_id) for task, value in y.items()}
        w = {task: pad(value, "decoder", task) for task, value in w.items()}
        batches.append((x, y, w))
    return batches


def _save_batches(batches, path):
    arrays = {}
    for task in batches[0][1]:
        for key in batches[0][0][task]:
            arrays[f"{task}/x/{key}"] = np.stack([b[0][task][key] for b in batches])
        arrays[f"{task}/y"] = np.stack([b[1][task] for b in batches])
        arrays[f"{task}/w"] = np.stack([b[2][task] for b in batches])
    np.savez(path, **arrays)


@pytest.fixture(scope="module")
def sides(tmp_path_factory):
    """Both sides' results: (TensorFlow's model, batches, JAX's results, JAX's arrays, folder)."""
    workdir = str(tmp_path_factory.mktemp("jax"))
    model = _model()
    batches = _padded_batches(model)
    _save_batches(batches, os.path.join(workdir, "batches.npz"))
    model.save_weights(os.path.join(workdir, "initial.weights.h5"))
    with open(os.path.join(workdir, "settings.json"), "w") as file:
        json.dump(SETTINGS, file)
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "jax_checks.py"), workdir], capture_output=True,
        text=True, timeout=900,
        env=jax_environment(XLA_FLAGS="--xla_force_host_platform_device_count=2"))
    assert done.returncode == 0, done.stderr[-4000:]
    with open(os.path.join(workdir, "jax.json")) as file:
        results = json.load(file)
    return model, batches, results, dict(np.load(os.path.join(workdir, "jax.npz"))), workdir


def _relative(got, want) -> float:
    return float(np.linalg.norm(np.asarray(got) - want) / max(np.linalg.norm(want), 1e-30))


def _tensorflow_gradients(model, batch, loss_of):
    import tensorflow as tf

    x, y, w = batch
    with tf.GradientTape() as tape:
        loss = loss_of(model, x, y, w)
    gradients = tape.gradient(loss, model.trainable_variables)
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in gradients]


def _shared_loss(model, x, y, w):
    return model.compute_loss(x, y, model(x, training=False), w, training=False)


def _fast_loss(model, x, y, w):
    return model.compute_task_losses(x, y, w, training=False)[0]


@pytest.mark.parametrize("loss_of", [_shared_loss, _fast_loss], ids=["shared", "fast_path"])
def test_the_same_weights_and_batch_give_the_same_loss_and_gradients(sides, loss_of):
    model, batches, results, arrays, _ = sides
    loss, gradients = _tensorflow_gradients(model, batches[0], loss_of)
    np.testing.assert_allclose(results["loss"], loss, rtol=1e-5)
    _, _, weights = batches[0]
    for task, (total, count, correct, examples) in results["statistics"].items():
        assert count == weights[task].sum() and examples == BATCH
    # The same variables in the same order (their names' numbers depend on the process).
    assert results["shapes"] == [list(v.shape) for v in model.trainable_variables]
    largest = max(np.linalg.norm(g) for g in gradients)
    compared = 0
    for index, (variable, want) in enumerate(zip(model.trainable_variables, gradients)):
        got, path = arrays[f"gradient/{index}"], variable.path
        if np.linalg.norm(want) > 1e-3 * largest:  # not tiny: compared relatively
            assert _relative(got, want) < 1e-5, path
            compared += 1
        else:
            np.testing.assert_allclose(got, want, atol=1e-6 * largest, err_msg=path)
    assert compared >= 10


def _fit_tensorflow(model, batches):
    from dss_keras.config import TrainConfig
    from dss_keras.training import make_optimizer

    model.compile(optimizer=make_optimizer(TrainConfig(**SETTINGS["optimizer"])))
    history = model.fit((b for b in batches), epochs=len(batches), steps_per_epoch=1, verbose=0)
    return history.history["loss"]


def test_twenty_steps_end_with_the_same_weights(sides):
    model, batches, results, arrays, workdir = sides
    trained = _model()
    trained.load_weights(os.path.join(workdir, "initial.weights.h5"))
    losses = _fit_tensorflow(trained, batches)  # the fast path, as `dss-keras train` runs
    np.testing.assert_allclose(results["losses"], losses, rtol=1e-4)
    assert losses[-1] < losses[0]
    for index, variable in enumerate(trained.trainable_variables):
        got = arrays[f"weight/{index}"]
        assert _relative(got, variable.numpy()) < 1e-4, variable.path


def test_data_parallel_over_two_devices_trains_like_one_device(sides):
    _, _, results, arrays, _ = sides
    assert results["devices"] == results["data_parallel_devices"] == 2
    np.testing.assert_allclose(results["data_parallel_losses"], results["losses"], rtol=1e-5)
    for index in range(len(results["shapes"])):
        assert _relative(arrays[f"data_parallel/{index}"], arrays[f"weight/{index}"]) < 1e-5, index


def test_mixed_bfloat16_trains_on_jax(sides):
    bf16 = sides[2]["bfloat16"]
    assert bf16["compute_dtype"] == "bfloat16"
    assert all(np.isfinite(bf16["losses"])) and bf16["losses"][-1] < bf16["losses"][0]


def test_bounded_shapes_compile_once_per_shape(sides):
    bounded = sides[2]["bounded_shapes"]
    assert bounded["traces"] == bounded["shapes"] < bounded["batches"] / 2


def test_a_model_trained_on_jax_loads_and_exports_on_tensorflow(sides, tmp_path):
    import keras

    from dss_keras.export import export_for_serving, load_and_predict
    from dss_keras.tf_fast_path.lean_t5 import T5LayerNormKeepingInput

    _, _, results, arrays, workdir = sides
    loaded = keras.models.load_model(os.path.join(workdir, "jax_model.keras"))
    for index, variable in enumerate(loaded.trainable_variables):
        np.testing.assert_array_equal(variable.numpy(), arrays[f"weight/{index}"])
    loaded.compute_task_losses(*sides[1][0])  # the fast path gives T5 its lean layers
    assert isinstance(loaded.seq2seq_lm.backbone.encoder_layer_norm, T5LayerNormKeepingInput)
    # TensorFlow's decoding (the SavedModel's) and KerasHub's greedy decoding on JAX agree.
    assert loaded.predict_labels(SETTINGS["texts"]) == results["labels"]
    path = export_for_serving(loaded, str(tmp_path / "export"))
    assert load_and_predict(path, SETTINGS["texts"]) == results["labels"]


def test_the_package_trains_where_tensorflow_is_not_installed(tmp_path):
    """What a GPU machine without TensorFlow runs: import, build, fit on token batches.

    TensorFlow's packages are made unimportable; only tokenizing (the
    `tf.data` pipeline) needs them.
    """
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(
        "import sys\n"
        "class _NoTensorFlow:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'tensorflow_text', "
        "'tensorflow_datasets'):\n"
        "            raise ImportError(f'no TensorFlow here: {name}')\n"
        "sys.meta_path.insert(0, _NoTensorFlow())\n")
    code = (
        "import sys, numpy as np, keras\n"
        "import dss_keras\n"
        "from dss_keras import model, objective, optimizers, strategies, training\n"
        "from dss_keras import backbones, testing\n"
        "lm = backbones.tiny_t5(proto=testing.toy_vocabulary(), hidden_dim=16, num_layers=1,\n"
        "                       num_heads=2, intermediate_dim=32)\n"
        "m = model.DistillStepByStep(lm, max_input_length=16, max_label_length=4,\n"
        "                            max_rationale_length=8)\n"
        "m.compile(optimizer=training.make_optimizer(dss_keras.TrainConfig(\n"
        "    lr_schedule='linear', clip_global_norm=1.0, adam_epsilon=1e-8,\n"
        "    adam_epsilon_placement='pytorch', steps=3)))\n"
        "rng = np.random.default_rng(0)\n"
        "def task(n):\n"
        "    ids = lambda length: rng.integers(3, 100, (4, length)).astype('int32')\n"
        "    ones = lambda length: np.ones((4, length), 'int32')\n"
        "    x = {'encoder_token_ids': ids(16), 'encoder_padding_mask': ones(16),\n"
        "         'decoder_token_ids': ids(n), 'decoder_padding_mask': ones(n)}\n"
        "    return x, ids(n), ones(n).astype('float32')\n"
        "parts = {'label': task(4), 'rationale': task(8)}\n"
        "batch = tuple({t: p[i] for t, p in parts.items()} for i in range(3))\n"
        "history = m.fit((batch for _ in range(3)), epochs=3, steps_per_epoch=1, verbose=0)\n"
        "assert history.history['loss'][-1] < history.history['loss'][0], history.history\n"
        "print(sorted(m for m in ('tensorflow', 'tensorflow_text') if m in sys.modules))\n")
    env = jax_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env["PYTHONPATH"]])
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_importing_the_model_on_jax_imports_no_tensorflow():
    code = ("import sys, dss_keras\n"
            "from dss_keras import model, objective, optimizers, strategies, preprocessor\n"
            "from dss_keras.metrics import TokenMean\n"
            "print(sorted(m for m in ('tensorflow', 'keras_hub') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env=jax_environment())
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_dss_keras_train_on_jax_and_its_run_exports_on_tensorflow(tmp_path):
    """`KERAS_BACKEND=jax dss-keras train`; `model.keras` loads and exports on TensorFlow."""
    import keras

    from dss_keras import testing
    from dss_keras.data import load
    from dss_keras.evaluation import evaluate_labels
    from dss_keras.export import export_for_serving, load_and_predict

    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "dss_keras.cli", "train", "--data", "word_problems:40",
         "--run-dir", str(run), *testing.tiny_run_flags()],
        capture_output=True, text=True, timeout=900, env=jax_environment())
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps_trained"] == testing.TINY_RUN["steps"]
    model = keras.models.load_model(run / "model.keras")
    splits = load("word_problems:40", validation_fraction=0.1)
    # The labels TensorFlow generates score as JAX's did in the run.
    scored = evaluate_labels(model, splits.test, "exact_match", 64)
    assert scored.accuracy == metrics["test"]["accuracy"]
    path = export_for_serving(model, str(tmp_path / "export"))
    texts = [record.input for record in splits.test[:4]]
    assert load_and_predict(path, texts) == model.predict_labels(texts)
