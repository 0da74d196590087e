"""The command line: every flag of `train`, `tune` and the recipes is honoured or refused."""

import argparse
import dataclasses
import json
import os

import pytest

from dss_keras import cli, experiments, testing
from dss_keras.config import TrainConfig
from dss_keras.data.records import write_jsonl

# A value other than the default for every TrainConfig field.
OTHER_VALUES = {
    "data": "word_problems", "data_dir": "release", "train_file": "train.jsonl",
    "validation_file": "valid.jsonl", "test_file": "test.jsonl", "label_source": "llm",
    "train_fraction": "0.5", "validation_fraction": "0.2", "preset": "t5_1.1_small",
    "vocabulary_size": "700", "hidden_dim": "32", "num_layers": "3", "num_heads": "2",
    "intermediate_dim": "96", "dropout": "0.1", "mode": "standard", "alpha": "0.3",
    "label_prefix": "label: ", "rationale_prefix": "why: ", "max_input_length": "99",
    "max_label_length": "9", "max_rationale_length": "77", "batch_size": "7",
    "learning_rate": "0.02", "weight_decay": "0.01", "steps": "33", "eval_every": "11",
    "gradient_accumulation_steps": "2", "dtype_policy": "mixed_bfloat16",
    "jit_compile": "true", "rematerialize": "true", "examples_per_row": "2",
    "strategy": "mirrored",
    "lr_schedule": "linear",
    "adam_epsilon": "1e-06", "adam_epsilon_placement": "pytorch", "clip_global_norm": "0.5",
    "seed": "5", "metric": "equation", "eval_batch_size": "17",
    "run_dir": "runs/other",
}


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The flags of `parser` that set a TrainConfig field."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return [a for a in parser._actions if a.option_strings and a.dest in names]


def subparser(name: str) -> argparse.ArgumentParser:
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices[name]


def check_every_flag(parse, parser, base: TrainConfig, capsys, other_values=OTHER_VALUES):
    """Each flag alone either changes its field in the resolved config or exits with a message."""
    actions = flag_actions(parser)
    assert actions
    refused = []
    for action in actions:
        value = other_values[action.dest]
        try:
            config = parse([action.option_strings[0], value])
        except SystemExit as exit_info:
            assert exit_info.code == 2
            message = capsys.readouterr().err.strip().splitlines()[-1]
            assert "error:" in message and len(message) > len("usage: error: "), message
            refused.append(action.dest)
            continue
        assert getattr(config, action.dest) != getattr(base, action.dest), action.dest
        assert str(getattr(config, action.dest)) == str(type(getattr(config, action.dest))(value))
    return refused


def test_every_train_flag_changes_the_config_or_fails_with_a_message(capsys):
    parser = subparser("train")

    def parse(argv):
        args = cli.build_parser().parse_args(["train", *argv])
        return cli._config(args)

    refused = check_every_flag(parse, parser, TrainConfig(), capsys)
    assert refused == ["data_dir"]  # a release folder needs a benchmark to read
    assert {a.dest for a in flag_actions(parser)} == {f.name for f in dataclasses.fields(TrainConfig)}


def test_train_refuses_flags_that_would_be_ignored(capsys):
    for argv, message in [
        (["--preset", "t5_1.1_base", "--hidden-dim", "128"], "shape the tiny model only"),
        (["--mode", "standard", "--alpha", "0.3"], "trains the label task only"),
        (["--data", "cqa", "--validation-file", "v.jsonl"], "it brings its splits"),
        (["--train-file", "t.jsonl", "--data-dir", "d"], "unless `data` names a benchmark"),
        (["--data", "cqa", "--validation-fraction", "0"], "brings its validation split"),
        (["--stepz", "3"], "unrecognized arguments: --stepz"),
        (["--step", "3"], "unrecognized arguments: --step"),  # no abbreviations
    ]:
        with pytest.raises(SystemExit) as exit_info:
            cli._config(cli.build_parser().parse_args(["train", *argv]))
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_every_tune_flag_changes_the_base_config_or_fails(capsys):
    parser = subparser("tune")

    def parse(argv):
        return cli._config(cli.build_parser().parse_args(["tune", *argv]))

    refused = check_every_flag(parse, parser, TrainConfig(), capsys)
    assert refused == ["data_dir"]
    tuned = {"mode", "alpha", "train_fraction", "learning_rate", "seed", "run_dir"}
    assert {a.dest for a in flag_actions(parser)} == (
        {f.name for f in dataclasses.fields(TrainConfig)} - tuned)


def test_every_recipe_flag_changes_the_config_or_fails(capsys):
    recipe = experiments.BenchmarkRecipe("cqa")
    parser = cli.recipe_parser(recipe)
    assert recipe.config().lr_schedule == "linear"  # the authors' optimizer

    def parse(argv):
        return cli.parse_recipe_flags(recipe, argv)[0]

    refused = check_every_flag(parse, parser, recipe.config(), capsys,
                               {**OTHER_VALUES, "lr_schedule": "constant",
                                "adam_epsilon_placement": "keras"})
    # The tiny model's flags do not apply to the paper's preset.
    assert sorted(refused) == ["dropout", "hidden_dim", "intermediate_dim", "num_heads",
                               "num_layers", "vocabulary_size"]


@pytest.mark.slow
def test_train_evaluate_predict(tmp_path, capsys):
    records = testing.toy_records(20)
    write_jsonl(records[:16], tmp_path / "train.jsonl")
    write_jsonl(records[16:], tmp_path / "test.jsonl")
    run_dir = str(tmp_path / "run")
    assert cli.main(["train", "--train-file", str(tmp_path / "train.jsonl"),
                     "--test-file", str(tmp_path / "test.jsonl"), "--run-dir", run_dir,
                     "--mode", "standard", "--validation-fraction", "0.25", "--metric",
                     "equation", *testing.tiny_run_flags()]) == 0
    out = capsys.readouterr().out
    assert "standard, preset tiny: 4 steps in" in out
    assert "scored by equation: validation accuracy" in out and "test accuracy" in out
    assert "Run saved in" in out and "{}" not in out
    saved = TrainConfig.load(os.path.join(run_dir, "config.json"))
    assert saved.mode == "standard" and saved.steps == 4 and saved.hidden_dim == 16

    # Scored with the run's own metric unless told otherwise.
    assert cli.main(["evaluate", run_dir, "--file", str(tmp_path / "test.jsonl")]) == 0
    evaluation = json.loads(capsys.readouterr().out)
    assert evaluation["num_examples"] == 4 and evaluation["metric"] == "equation"
    assert cli.main(["evaluate", run_dir, "--file", str(tmp_path / "test.jsonl"),
                     "--metric", "exact_match"]) == 0
    assert json.loads(capsys.readouterr().out)["metric"] == "exact_match"

    assert cli.main(["predict", run_dir, records[0].input, records[1].input]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2


@pytest.mark.slow
def test_train_without_validation_or_test_says_so(tmp_path, capsys):
    write_jsonl(testing.toy_records(16), tmp_path / "train.jsonl")
    assert cli.main(["train", "--train-file", str(tmp_path / "train.jsonl"), "--run-dir",
                     str(tmp_path / "run"), "--validation-fraction", "0",
                     *testing.tiny_run_flags()]) == 0
    out = capsys.readouterr().out
    assert "validation: none, test: none" in out and "final loss" in out


def test_a_bad_flag_is_a_usage_error(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--alpah", "0.3"])
    assert "unrecognized arguments" in capsys.readouterr().err


def test_predict_without_a_model(tmp_path, capsys):
    assert cli.main(["predict", str(tmp_path), "text"]) == 1
    assert "no trained model here" in capsys.readouterr().err


def test_tune_has_its_own_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", "--help"])
    assert exit_info.value.code == 0
    assert "usage: dss-keras tune" in capsys.readouterr().out


def test_quickstart_flags_are_train_flags_with_the_quickstart_defaults(capsys):
    from dss_keras import quickstart

    with pytest.raises(SystemExit):
        cli.main(["quickstart", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--learning-rate LEARNING_RATE AdamW learning rate" in help_text
    assert f"(default: {quickstart.get_config().learning_rate!r})" in help_text
    assert "--mode" not in help_text and "--train-file" not in help_text


# --- export: precision and closed label set ------------------------------------------------


def export_args(*flags):
    return cli.build_parser().parse_args(["export", "runs/mine", *flags])


def test_export_takes_a_precision_and_a_label_set():
    args = export_args("--precision", "bfloat16", "--label-set", "yes, no")
    assert args.precision == "bfloat16"
    assert cli._export_label_set(args).labels == ("yes", "no")
    assert export_args().precision == "float32"
    assert cli._export_label_set(export_args("--label-set", "none")) is None


def test_export_refuses_a_bad_precision_or_label_set(capsys):
    with pytest.raises(SystemExit) as exit_info:
        export_args("--precision", "int4")
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        cli._export_label_set(export_args("--label-set", "yes"))
    assert exit_info.value.code == 2
    assert "at least two distinct" in capsys.readouterr().err


@pytest.mark.parametrize("data, expected", [("cqa", "choices"), ("esnli", "entailment,neutral,"
                                            "contradiction"), ("word_problems", None)])
def test_export_label_set_defaults_to_the_runs_benchmark(tmp_path, data, expected):
    TrainConfig(data=data, data_dir="release" if data != "word_problems" else None
                ).save(tmp_path / "config.json")
    args = cli.build_parser().parse_args(["export", str(tmp_path)])
    label_set = cli._export_label_set(args)
    assert (label_set and label_set.spec) == expected
