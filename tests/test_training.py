import json
import os

import keras
import pytest

from dss_keras import cli, testing
from dss_keras.config import TrainConfig
from dss_keras.data import Splits
from dss_keras.data.records import write_jsonl
from dss_keras.training import train

TINY = dict(
    steps=4, eval_every=2, batch_size=4, vocabulary_size=150, hidden_dim=16,
    intermediate_dim=32, num_layers=1, num_heads=2, max_input_length=48,
    max_label_length=4, max_rationale_length=12,
)


def test_config_rejects_unknown_and_invalid_fields():
    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        TrainConfig.from_dict({"alhpa": 0.3})
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig(alpha=2.0)
    with pytest.raises(ValueError, match="train_fraction"):
        TrainConfig(train_fraction=0.0)
    with pytest.raises(ValueError, match="Unknown config field"):
        TrainConfig().replace(stepz=3)


def test_config_json_round_trip(tmp_path):
    config = TrainConfig(train_file="a.jsonl", alpha=0.3, jit_compile="false")
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert config.jit_compile_value is False


@pytest.mark.slow
def test_train_writes_the_run_directory_and_resumes(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), **TINY)
    records = testing.toy_records(24)
    result = train(config, Splits(records[:16], records[16:20], records[20:]), verbose=0)
    files = set(os.listdir(config.run_dir))
    assert {"config.json", "metrics.json", "model.keras", "vocabulary.spm", "logs"} <= files
    assert "backup" not in files  # removed once training finished
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["steps_trained"] == 4
    assert metrics["data"]["num_examples"] == 16
    assert set(metrics["test"]) == {"accuracy", "num_examples", "num_unparsable"}
    assert "val_label_accuracy" in metrics["history"]
    assert len(metrics["history"]["loss"]) == 2
    # The same config on the same directory returns the finished run.
    again = train(config, Splits(records[:16], [], []), verbose=0)
    assert again.metrics == metrics
    assert isinstance(again.model, keras.Model)
    # Another config there is refused, never overwritten.
    with pytest.raises(ValueError, match="alpha differ"):
        train(config.replace(alpha=0.1), Splits(records[:16], [], []), verbose=0)


@pytest.mark.slow
def test_train_resumes_after_a_crash(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), **{**TINY, "steps": 6})
    records = testing.toy_records(16)

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        train(config, Splits(records, [], []), callbacks=[Crash()], verbose=0)
    assert os.path.isdir(tmp_path / "run" / "backup")
    assert not os.path.exists(tmp_path / "run" / "metrics.json")

    class CountEpochs(keras.callbacks.Callback):
        epochs = []

        def on_epoch_begin(self, epoch, logs=None):
            self.epochs.append(epoch)

    counter = CountEpochs()
    result = train(config, Splits(records, [], []), callbacks=[counter], verbose=0)
    assert counter.epochs == [2]  # the two finished periods are not redone
    assert int(result.model.optimizer.iterations) == 6


@pytest.mark.slow
def test_cli_train_evaluate_predict(tmp_path, capsys):
    records = testing.toy_records(20)
    write_jsonl(records[:16], tmp_path / "train.jsonl")
    write_jsonl(records[16:], tmp_path / "test.jsonl")
    run_dir = str(tmp_path / "run")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    assert cli.main(["train", "--train-file", str(tmp_path / "train.jsonl"),
                     "--test-file", str(tmp_path / "test.jsonl"), "--run-dir", run_dir,
                     "--mode", "standard", "--validation-fraction", "0.25", *flags]) == 0
    out = capsys.readouterr().out
    assert "Run saved in" in out
    saved = TrainConfig.load(os.path.join(run_dir, "config.json"))
    assert saved.mode == "standard" and saved.steps == 4 and saved.hidden_dim == 16

    assert cli.main(["evaluate", run_dir, "--file", str(tmp_path / "test.jsonl")]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["num_examples"] == 4

    assert cli.main(["predict", run_dir, records[0].input, records[1].input]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


def test_cli_rejects_a_bad_flag(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--alpah", "0.3"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_cli_predict_without_a_model(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "text"]) == 1
    assert "no trained model here" in capsys.readouterr().err


def test_cli_hands_tune_flags_to_the_tuner(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", "--help"])
    assert exit_info.value.code == 0
    assert "usage: dss-keras tune" in capsys.readouterr().out
