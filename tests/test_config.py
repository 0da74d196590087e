"""`TrainConfig`: one place for every setting, its default and its allowed values."""

import inspect

import pytest

from dss_keras.config import MODES, TASKS, TrainConfig, check_applicable, tasks_of
from dss_keras.model import DistillStepByStep
from dss_keras.preprocessor import MultiTaskPreprocessor
from dss_keras.vocabulary import load_or_train, train_vocabulary, vocabulary_texts


def test_rejects_unknown_and_invalid_fields():
    with pytest.raises(ValueError, match="did you mean 'alpha'"):
        TrainConfig.from_dict({"alhpa": 0.3})
    with pytest.raises(ValueError, match="alpha"):
        TrainConfig(alpha=2.0)
    with pytest.raises(ValueError, match="train_fraction"):
        TrainConfig(train_fraction=0.0)
    with pytest.raises(ValueError, match="Unknown config field"):
        TrainConfig().replace(stepz=3)
    with pytest.raises(ValueError, match="`mode` must be one of"):
        TrainConfig(mode="both")


def test_json_round_trip(tmp_path):
    config = TrainConfig(train_file="a.jsonl", alpha=0.3, jit_compile="false")
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    assert config.jit_compile_value is False


@pytest.mark.parametrize("function", [DistillStepByStep.__init__, MultiTaskPreprocessor.__init__,
                                      vocabulary_texts, train_vocabulary, load_or_train])
def test_every_default_named_like_a_field_is_the_fields_default(function):
    """The model, the preprocessor and the vocabulary take their defaults from `TrainConfig`."""
    defaults = TrainConfig()
    shared = {name: parameter.default
              for name, parameter in inspect.signature(function).parameters.items()
              if hasattr(defaults, name) and parameter.default is not inspect.Parameter.empty}
    assert shared, "no parameter named like a field"
    assert shared == {name: getattr(defaults, name) for name in shared}


def test_modes_and_their_tasks():
    assert tasks_of("distill_step_by_step") == TASKS == ("label", "rationale")
    assert tasks_of("standard") == ("label",)
    assert set(MODES) == {"distill_step_by_step", "standard"}
    with pytest.raises(ValueError, match="Received: mode='explain'"):
        tasks_of("explain")


def test_a_benchmark_is_scored_by_its_own_metric_unless_told():
    assert TrainConfig(data="svamp").metric == "svamp"
    assert TrainConfig(data="tfds:cqa").metric == "cqa"
    assert TrainConfig(train_file="a.jsonl").metric == "exact_match"
    assert TrainConfig(data="svamp", metric="exact_match").metric == "exact_match"
    assert TrainConfig(data="svamp").replace(data="cqa").metric == "cqa"


def test_settings_that_would_be_ignored_are_refused():
    with pytest.raises(ValueError, match="shape the tiny model only"):
        check_applicable({"hidden_dim": 32}, TrainConfig(preset="t5_1.1_small"))
    with pytest.raises(ValueError, match="trains the label task only"):
        check_applicable({"alpha": 0.3}, TrainConfig(mode="standard"))
    check_applicable({"hidden_dim": 32}, TrainConfig())  # the tiny model: applies


def test_resolved_paths_name_the_same_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = TrainConfig(run_dir="runs/a").resolved()
    assert first == TrainConfig(run_dir="./runs/../runs/a").resolved()
    assert first.run_dir == str(tmp_path / "runs" / "a")
    assert TrainConfig(preset="t5_1.1_base").resolved().preset == "t5_1.1_base"  # a name
