"""A run directory's model: a damaged `model.keras` says so and is rebuilt from the kept
backup without training; a missing one says why (stopped, never trained); loading is silent."""

import os
import shutil
import subprocess
import sys

import keras
import numpy as np
import pytest

from dss_keras import run_dir, testing
from dss_keras.config import TrainConfig
from dss_keras.data import Splits, write_jsonl
from dss_keras.training import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REBUILD = ("The run kept its last backup: rerun the `dss-keras train` command that trained it "
           "(settings in {config}) to rebuild model.keras from it without training.")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished tiny run: its config, records and trained weights."""
    records = testing.toy_records(24)
    splits = Splits(records[:16], records[16:20], records[20:])
    config = TrainConfig(run_dir=str(tmp_path_factory.mktemp("finished") / "run"),
                         **testing.TINY_RUN)
    result = train(config, splits, verbose=0)
    return config, splits, [np.array(w) for w in result.model.get_weights()]


@pytest.fixture
def run(finished, tmp_path):
    """A copy of the finished run: (config, splits, weights)."""
    config, splits, weights = finished
    config = config.replace(run_dir=str(tmp_path / "run")).resolved()
    shutil.copytree(finished[0].run_dir, config.run_dir)
    config.save(os.path.join(config.run_dir, run_dir.CONFIG))
    write_jsonl(splits.test, tmp_path / "test.jsonl")
    return config, splits, weights


def stop_before_the_end(config) -> None:
    """The run as if it had been stopped before it saved its model."""
    for name in ("model.keras", "metrics.json"):
        os.remove(os.path.join(config.run_dir, name))


def damage(path, how: str) -> None:
    if how == "empty":
        open(path, "wb").close()
    else:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["empty", "truncated"])
def test_every_command_that_loads_a_damaged_model_says_so_and_how_to_recover(
        run, tmp_path, cli_error, how):
    config, _, _ = run
    model_path = os.path.join(config.run_dir, "model.keras")
    damage(model_path, how)
    reason = "empty" if how == "empty" else "not a whole .keras archive: "
    recover = REBUILD.format(config=os.path.join(config.run_dir, "config.json"))
    for argv in (["evaluate", config.run_dir, "--file", str(tmp_path / "test.jsonl")],
                 ["predict", config.run_dir, "Ana has 3 cups."],
                 ["export", config.run_dir, "--export-dir", str(tmp_path / "saved")]):
        status, line = cli_error(*argv)
        assert status == 1
        assert line.startswith(f"dss-keras: error: {model_path}: damaged ({reason}"), line
        assert line.endswith(recover), line


@pytest.mark.slow
def test_train_on_the_finished_run_rebuilds_a_damaged_model_without_training(run, caplog):
    config, splits, weights = run
    model_path = os.path.join(config.run_dir, "model.keras")
    damage(model_path, "truncated")

    class Batches(keras.callbacks.Callback):
        count = 0

        def on_train_batch_end(self, batch, logs=None):
            Batches.count += 1

    with caplog.at_level("WARNING", logger="dss_keras.run_dir"):
        result = train(config, splits, callbacks=[Batches()], verbose=0)
    assert Batches.count == 0
    assert "damaged" in caplog.text and "rebuilding it from" in caplog.text
    for got, want in zip(result.model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    rebuilt = keras.models.load_model(model_path)
    for got, want in zip(rebuilt.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_without_a_kept_backup_the_message_says_to_train_again(run, cli_error):
    config, splits, _ = run
    shutil.rmtree(os.path.join(config.run_dir, "backup"))
    model_path = os.path.join(config.run_dir, "model.keras")
    damage(model_path, "empty")
    again = ("The run kept no backup to rebuild it from: train it again, with the same command "
             "and another --run-dir.")
    status, line = cli_error("predict", config.run_dir, "Ana has 3 cups.")
    assert status == 1 and line.endswith(again), line
    with pytest.raises(run_dir.DamagedModelError, match="kept no backup"):
        train(config, splits, verbose=0)
    assert os.path.getsize(model_path) == 0  # nothing else was touched


def test_a_damaged_keras_file_outside_a_run(tmp_path, cli_error):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04")
    status, line = cli_error("predict", str(path), "Ana has 3 cups.")
    assert status == 1 and line == (
        f"dss-keras: error: {path}: damaged (not a whole .keras archive: 4 bytes, cut short?). "
        "Save or copy the model there again.")


@pytest.mark.slow
def test_a_run_that_stopped_before_its_end_says_so(run, cli_error):
    config, _, _ = run
    stop_before_the_end(config)
    status, line = cli_error("predict", config.run_dir, "Ana has 3 cups.")
    assert status == 1 and line == (
        f"dss-keras: error: {config.run_dir}: training stopped before it finished (last backup: "
        "epoch-000002); rerun the `dss-keras train` command that started it to resume.")


@pytest.mark.slow
def test_the_rerun_of_a_stopped_run_removes_what_dead_writers_left(run):
    config, splits, weights = run
    stop_before_the_end(config)
    dead = os.path.join(config.run_dir, ".tmp-model.keras-999999999-w.keras")  # a killed save
    open(dead, "wb").close()
    result = train(config, splits, verbose=0)
    assert not os.path.exists(dead)
    assert result.metrics["steps_trained"] == 4
    for got, want in zip(result.model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)


def test_an_empty_directory_has_no_model(tmp_path, cli_error):
    status, line = cli_error("predict", str(tmp_path), "Ana has 3 cups.")
    assert status == 1 and line == (
        f"dss-keras: error: {tmp_path / 'model.keras'}: no trained model here; train one with "
        "`dss-keras train`.")


@pytest.mark.slow
def test_loading_a_run_prints_nothing_but_the_answers(run):
    """Keras warns about `compile()` when a model is loaded, unless `from_config` prevents it."""
    config, _, _ = run
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    completed = subprocess.run(
        [sys.executable, "-m", "dss_keras.cli", "predict", config.run_dir, "Ana has 3 cups.",
         "Bo has 2 hats."], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    assert len(completed.stdout.splitlines()) == 2
