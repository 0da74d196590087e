"""The benchmark recipes: paper defaults, flags, and tiny end-to-end runs."""

import doctest
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

from dss_keras import cli, experiments
from dss_keras.config import TrainConfig
from dss_keras.data import load
from dss_keras.training import load_splits

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "official" / "good"
BENCHMARKS = ("cqa", "svamp", "esnli", "anli1")
# A model that builds and trains in seconds; flags of every end-to-end run.
TINY_FLAGS = [
    "--preset", "tiny", "--hidden-dim", "16", "--intermediate-dim", "32",
    "--num-layers", "1", "--num-heads", "2", "--max-label-length", "8",
    "--max-rationale-length", "16", "--eval-batch-size", "256", "--progress", "0",
]


def official_data_dir() -> Path | None:
    path = Path(os.environ.get("DSS_DATA_DIR") or ROOT.parent / "shared" / "data" / "dss_official")
    return path if path.is_dir() else None


def load_recipe(name: str):
    """The module of `recipes/<name>.py` (not a package: loaded by path)."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(name: str, data_dir, run_dir, *flags):
    module = load_recipe(name)
    argv = ["--data-dir", str(data_dir), "--run-dir", str(run_dir), *TINY_FLAGS, *flags]
    assert cli.run_recipe(module.get_config(), argv) == 0
    with open(Path(run_dir) / "results.json", encoding="utf-8") as f:
        return json.load(f)


def check_results(results, benchmark, *, num_train, num_valid, num_test):
    assert {
        "benchmark", "config", "data", "teacher", "validation", "test", "validation_accuracy",
        "test_accuracy", "wall_seconds", "train_seconds", "steps_trained", "pipeline", "export",
    } <= set(results)
    assert results["benchmark"] == benchmark
    TrainConfig.from_dict(results["config"])  # a complete, valid config
    assert results["config"]["metric"] == benchmark
    data = results["data"]
    assert (data["num_train"], data["num_valid"], data["num_test"]) == (
        num_train, num_valid, num_test
    )
    teacher = results["teacher"]["train"]
    assert teacher["name"] == benchmark and teacher["num_records"] == num_train
    assert 0.0 <= teacher["label_accuracy"] <= 1.0
    assert teacher["num_correct"] == round(teacher["label_accuracy"] * num_train)
    for split, size in (("validation", num_valid), ("test", num_test)):
        assert results[split]["num_examples"] == size
        assert 0.0 <= results[f"{split}_accuracy"] <= 1.0
    assert results["wall_seconds"] >= results["train_seconds"] > 0


# --- the declarative configs -------------------------------------------------


@pytest.mark.parametrize("name", BENCHMARKS)
def test_recipe_default_config_is_the_papers(name):
    recipe = load_recipe(name).get_config()
    assert recipe.benchmark == name
    config = recipe.config()
    assert config.preset == "t5_1.1_base"
    assert config.learning_rate == 5e-5
    assert config.batch_size == 64
    assert config.steps == 10_000
    assert config.eval_every == 250
    assert config.max_input_length == 1024
    assert config.max_label_length == 64
    assert config.max_rationale_length == 256
    assert config.alpha == 0.5
    assert config.mode == "distill_step_by_step"
    assert config.label_source == "gt"
    assert config.metric == name
    assert config.run_dir == os.path.join("runs", f"{name}-distill_step_by_step")
    assert config.data == name
    # No flags give the same config; --tfds reads the TFDS builder instead.
    assert cli.parse_recipe_flags(recipe, [])[0] == config
    assert cli.parse_recipe_flags(recipe, ["--tfds"])[0] == config.replace(data=f"tfds:{name}")


@pytest.mark.parametrize("name", BENCHMARKS)
def test_recipe_docstring_holds_its_command(name):
    module = load_recipe(name)
    assert f"python recipes/{name}.py --data-dir" in module.__doc__
    assert "--preset tiny" in module.__doc__


def test_tiny_preset_defaults():
    cqa = load_recipe("cqa").get_config().config(preset="tiny")
    assert 2000 <= cqa.vocabulary_size <= 4000
    assert cqa.max_input_length == 256
    assert cqa.learning_rate == experiments.TINY_SETTINGS["learning_rate"]
    assert cqa.alpha == 0.5
    svamp = load_recipe("svamp").get_config().config(preset="tiny", steps=7)
    assert svamp.steps == 7 and svamp.metric == "svamp"
    # A real preset keeps the paper's settings, and ignores the tiny ones.
    base = load_recipe("cqa").get_config().config(preset="t5_1.1_small")
    assert base.learning_rate == 5e-5 and base.max_input_length == 1024


def test_flags_named_like_config_fields(tmp_path):
    recipe = load_recipe("svamp").get_config()
    config, args = cli.parse_recipe_flags(recipe, [
        "--tfds", "--data-dir", "release", "--mode", "standard",
        "--label-source", "llm", "--train-fraction", "0.25", "--preset", "t5_1.1_small",
        "--seed", "3", "--batch-size", "16", "--gradient-accumulation-steps", "4",
        "--steps", "500", "--eval-every", "50", "--learning-rate", "1e-4",
        "--run-dir", str(tmp_path / "run"), "--no-export", "--export-dir", "exports",
        "--dtype-policy", "mixed_bfloat16", "--progress", "2",
    ])
    assert (config.mode, config.label_source, config.train_fraction, config.preset) == (
        "standard", "llm", 0.25, "t5_1.1_small"
    )
    assert (config.seed, config.batch_size, config.gradient_accumulation_steps) == (3, 16, 4)
    assert (config.steps, config.eval_every, config.learning_rate) == (500, 50, 1e-4)
    assert config.run_dir == str(tmp_path / "run")
    assert config.dtype_policy == "mixed_bfloat16"
    assert (config.data, config.data_dir) == ("tfds:svamp", "release")
    assert (args.export, args.export_dir, args.progress) == (False, "exports", "2")


def test_data_dir_from_the_environment(monkeypatch):
    monkeypatch.setenv("DSS_DATA_DIR", str(FIXTURES))
    splits = load_splits(load_recipe("esnli").get_config().config())
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (4, 2, 1)


DATA = ["--data-dir", str(FIXTURES)]


@pytest.mark.parametrize(
    "argv, message",
    [
        (DATA + ["--mode", "distill"], "invalid choice: 'distill'"),
        (DATA + ["--label-source", "human"], "invalid choice: 'human'"),
        (DATA + ["--train-fraction", "0"], "`train_fraction` must be in (0, 1]"),
        (DATA + ["--train-fraction", "1.5"], "`train_fraction` must be in (0, 1]"),
        (DATA + ["--steps", "0"], "`steps` must be a whole number, at least 1"),
        (DATA + ["--steps", "ten"], "invalid int value: 'ten'"),
        (DATA + ["--alpha", "2"], "`alpha` must be in [0, 1]"),
        (DATA + ["--batch-size", "0"], "`batch_size` must be a whole number, at least 1"),
        (DATA + ["--hidden-dim", "32"], "hidden_dim shape the tiny model only"),
        (DATA + ["--stepz", "3"], "unrecognized arguments: --stepz"),
        (DATA + ["--train-file", "x.jsonl"], "unrecognized arguments: --train-file"),
        (DATA + ["--metric", "exact_match"], "unrecognized arguments: --metric"),
        (DATA + ["--mode", "standard", "--alpha", "0.3"], "mode 'standard' trains the label"),
    ],
)
def test_bad_flags_exit_with_a_message(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_recipe_flags(load_recipe("esnli").get_config(), argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_or_wrong_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DSS_DATA_DIR", raising=False)
    recipe = load_recipe("cqa").get_config()
    with pytest.raises(ValueError, match=r"pass its folder as `data_dir` \(--data-dir\)"):
        load_splits(recipe.config())
    with pytest.raises(FileNotFoundError, match="no folder cqa/"):
        load_splits(recipe.config(data_dir=str(tmp_path)))


def test_unknown_benchmark_and_bad_settings():
    with pytest.raises(ValueError, match="Unknown benchmark.*esnli, anli1, cqa, svamp.*'squad'"):
        experiments.BenchmarkRecipe("squad")
    with pytest.raises(ValueError, match="did you mean 'learning_rate'"):
        experiments.BenchmarkRecipe("cqa", settings={"learnig_rate": 1e-4})
    with pytest.raises(ValueError, match="sets metric itself"):
        experiments.BenchmarkRecipe("cqa", settings={"metric": "exact_match"})
    with pytest.raises(ValueError, match="sets data itself"):
        experiments.BenchmarkRecipe("cqa", settings={"data": "svamp"})
    with pytest.raises(ValueError, match="alpha"):
        experiments.BenchmarkRecipe("cqa", tiny={"alpha": 3.0}).config(preset="tiny")
    recipe = experiments.BenchmarkRecipe("cqa")
    with pytest.raises(ValueError, match="its own metric"):
        experiments.run_experiment(recipe, recipe.config().replace(metric="svamp"))
    with pytest.raises(ValueError, match="reads its own benchmark"):
        experiments.run_experiment(recipe, recipe.config().replace(data="svamp",
                                                                    metric="cqa"))


def test_config_takes_one_data_source():
    with pytest.raises(ValueError, match="either `data`"):
        TrainConfig(data="cqa", train_file="train.jsonl")
    with pytest.raises(ValueError, match="`data_dir` must be unset"):
        TrainConfig(train_file="train.jsonl", data_dir="release")
    with pytest.raises(ValueError, match="brings its validation split"):
        TrainConfig(data="cqa", validation_fraction=0.2)


def test_doctests():
    result = doctest.testmod(experiments, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_previous_export_is_found_only_if_it_exists(tmp_path):
    results_path = str(tmp_path / "results.json")
    assert experiments._previous_export(results_path) is None
    for export, found in [(None, None), ({"skipped": "no module"}, None),
                          ({"path": str(tmp_path / "gone")}, None),
                          ({"path": str(tmp_path)}, str(tmp_path))]:
        (tmp_path / "results.json").write_text(json.dumps({"export": export}))
        assert experiments._previous_export(results_path) == found


def test_export_is_skipped_when_the_module_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "dss_keras.export", None)  # import raises ImportError
    exporter, reason = experiments._exporter()
    assert exporter is None and "not available" in reason


def test_tfds_source_reads_the_same_records_as_the_release(tmp_path, monkeypatch):
    pytest.importorskip("tensorflow_datasets")
    from dss_keras.data.tfds.dss_svamp import dss_svamp_dataset_builder

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    manual_dir = str(Path(dss_svamp_dataset_builder.__file__).parent / "dummy_data")
    from_tfds = load("tfds:svamp", data_dir=manual_dir)
    from_release = load("svamp", data_dir=manual_dir)
    assert from_tfds == from_release
    assert [len(s) for s in (from_tfds.train, from_tfds.validation, from_tfds.test)] == [9, 1, 3]
    assert os.listdir(tmp_path)  # prepared into TFDS_DATA_DIR


# --- tiny end-to-end runs ------------------------------------------------------


@pytest.mark.slow
def test_esnli_recipe_on_fixtures(tmp_path, capsys):
    results = run("esnli", FIXTURES, tmp_path / "run", "--steps", "2", "--batch-size", "4",
                  "--vocabulary-size", "120", "--no-export")
    check_results(results, "esnli", num_train=4, num_valid=2, num_test=1)
    assert results["export"] is None
    out = capsys.readouterr().out
    assert "Teacher: esnli train: 4 records" in out and "test accuracy" in out


@pytest.mark.slow
def test_anli1_recipe_on_fixtures_exports_once(tmp_path, capsys):
    exporter, reason = experiments._exporter()
    flags = ["--steps", "2", "--batch-size", "4", "--vocabulary-size", "120",
             "--label-source", "llm", "--export-dir", str(tmp_path / "saved_models")]
    results = run("anli1", FIXTURES, tmp_path / "run", *flags)
    check_results(results, "anli1", num_train=3, num_valid=1, num_test=2)
    assert results["teacher"]["train"]["num_unparsed"] == 1
    assert results["pipeline"]["missing_label"] == 1  # llm labels: the unparsed one is out
    if exporter is None:
        assert results["export"] == {"skipped": reason}
        return
    path = results["export"]["path"]
    assert path == str(tmp_path / "saved_models" / "anli1-distill_step_by_step" / "1")
    assert os.path.isdir(path)
    # Rerunning the finished run finds this export and does not export again.
    assert experiments._previous_export(str(tmp_path / "run" / "results.json")) == path


@pytest.mark.slow
@pytest.mark.parametrize("name, num_train, num_valid, num_test", [
    ("cqa", 8767, 974, 1221),
    ("svamp", 720, 80, 200),
])
def test_recipe_on_the_release(name, num_train, num_valid, num_test, tmp_path, capsys):
    data_dir = official_data_dir()
    if data_dir is None:
        pytest.skip("the release data (shared/data/dss_official or $DSS_DATA_DIR) is absent")
    results = run(name, data_dir, tmp_path / "run", "--steps", "4", "--train-fraction", "0.05",
                  "--batch-size", "8", "--vocabulary-size", "400", "--max-input-length", "128",
                  "--no-export")
    check_results(results, name, num_train=num_train, num_valid=num_valid, num_test=num_test)
    assert results["data"]["num_train_used"] == round(0.05 * num_train)
    assert results["teacher"]["train"]["label_accuracy"] > 0.5  # PaLM is mostly right
    assert results["teacher"]["train_subset"]["num_records"] == round(0.05 * num_train)
    assert results["pipeline"]["num_records"] == round(0.05 * num_train)
    out = capsys.readouterr().out
    assert f"Teacher: {name} train: {num_train} records" in out
