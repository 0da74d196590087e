import json
import os
import warnings

import keras
import pytest

from dss_keras import testing
from dss_keras.config import TrainConfig
from dss_keras.data import Splits
from dss_keras.data.records import write_jsonl
from dss_keras.training import train

TINY = testing.TINY_RUN


@pytest.mark.slow
def test_train_writes_the_run_directory_and_resumes(tmp_path):
    config = TrainConfig(run_dir=str(tmp_path / "run"), **TINY)
    records = testing.toy_records(24)
    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        result = train(config, Splits(records[:16], records[16:20], records[20:]), verbose=0)
    # Keras' "ran out of data" after each pass over the validation set says nothing here.
    assert not [w for w in warned if "ran out of data" in str(w.message)]
    files = set(os.listdir(config.run_dir))
    assert {"config.json", "metrics.json", "model.keras", "vocabulary.spm", "logs"} <= files
    assert "train.lock" not in files  # released once training finished
    # One backup generation is kept: a damaged model.keras is rebuilt from it.
    assert os.listdir(tmp_path / "run" / "backup") == ["epoch-000002"]
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
