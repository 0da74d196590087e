"""Tests of dss_keras.tuning: the hypermodel, resumable searches, reports, distributed search.

Trials train a tiny T5 (width 16, one layer) for two steps. Most tests compile
it with `run_eagerly=True` (`EagerHyperModel`): tracing the train step of a
fresh model costs far more than two eager steps on a small CPU, and every
trial builds a fresh model.
"""

import csv
import importlib.util
import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import keras_tuner
import pytest

from dss_keras import cli, testing, tuning
from dss_keras.config import TrainConfig
from dss_keras.data import Splits
from dss_keras.training import load_splits

TINY = dict(
    hidden_dim=16, intermediate_dim=32, num_layers=1, num_heads=2, vocabulary_size=120,
    steps=2, eval_every=2, batch_size=8, max_input_length=48, max_label_length=4,
    max_rationale_length=16,
)
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class EagerHyperModel(tuning.DSSHyperModel):
    """Compiles eagerly and records each `fit` call (hyperparameter values)."""

    def __init__(self, *args, interrupt_at=None, fail=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.fits = []
        self.interrupt_at = interrupt_at
        self.fail = fail

    def build(self, hp):
        model = super().build(hp)
        model.compile(optimizer=model.optimizer, run_eagerly=True)
        return model

    def fit(self, hp, model, *args, **kwargs):
        self.fits.append(dict(hp.values))
        if len(self.fits) == self.interrupt_at:
            raise KeyboardInterrupt  # What Ctrl-C does in the middle of a search.
        if self.fail:
            raise ValueError("boom")
        return super().fit(hp, model, *args, **kwargs)


def hypermodel(**kwargs):
    options = dict(alphas=[0.5], train_fractions=[0.5, 1.0],
                   modes=["distill_step_by_step", "standard"])
    options.update(kwargs)
    return EagerHyperModel(TrainConfig(**TINY), toy_splits(), **options)


def toy_splits():
    return Splits(testing.toy_records(32), testing.toy_records(8, seed=1), [])


def key(values):
    return tuple(sorted(values.items()))


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    """A grid search stopped by an interruption in its second trial, then resumed with more.

    Returns `(project_dir, first run's fits, second run's fits, report)`.
    """
    project = str(tmp_path_factory.mktemp("tune") / "project")
    first = hypermodel(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        tuning.tune(first, project, search="grid", max_trials=2)
    second = hypermodel()
    report = tuning.tune(second, project, search="grid", max_trials=3, target_accuracy=0.0)
    return project, first.fits, second.fits, report


def test_objective_is_generated_label_accuracy_maximised():
    assert tuning.OBJECTIVE.name == "val_label_accuracy"
    assert tuning.OBJECTIVE.direction == "max"
    # KerasTuner would infer nothing for this name: the direction must be explicit.
    assert keras_tuner.Objective("val_label_accuracy", "max").better_than(0.6, 0.5)


def test_trial_config_maps_hyperparameters_and_alpha_only_for_dss():
    model = hypermodel(alphas=[0.2, 0.8], learning_rates=[1e-3, 3e-3], seeds=[0, 5])
    hp = keras_tuner.HyperParameters()
    model.trial_config(hp)
    assert sorted(hp.values) == ["alpha", "learning_rate", "mode", "seed", "train_fraction"]
    hp.values.update(mode="distill_step_by_step", alpha=0.8, learning_rate=3e-3, seed=5,
                     train_fraction=1.0)
    config = model.trial_config(hp)
    assert (config.mode, config.alpha, config.learning_rate, config.seed) == (
        "distill_step_by_step", 0.8, 3e-3, 5)
    hp.values["mode"] = "standard"
    assert not hp.is_active("alpha")
    assert model.trial_config(hp).mode == "standard"
    # 2 alphas x DSS + standard, 2 fractions, 2 learning rates, 2 seeds.
    assert model.num_combinations() == 3 * 2 * 2 * 2


def test_invalid_choices_are_rejected():
    with pytest.raises(ValueError, match="alphas"):
        hypermodel(alphas=[1.5])
    with pytest.raises(ValueError, match="train_fractions"):
        hypermodel(train_fractions=[0.0])
    with pytest.raises(ValueError, match="modes"):
        hypermodel(modes=["distill"])
    with pytest.raises(ValueError, match="needs validation records"):
        tuning.DSSHyperModel(TrainConfig(), Splits(testing.toy_records(4), [], []))


def test_trial_subset_is_deterministic_and_nested():
    model = hypermodel(seeds=[0, 1])

    def subset(fraction, seed):
        hp = keras_tuner.HyperParameters()
        model.trial_config(hp)
        hp.values.update(train_fraction=fraction, seed=seed)
        return [r.id for r in model.trial_records(hp)]

    half = subset(0.5, 0)
    assert len(half) == 16
    assert half == subset(0.5, 0)  # Another trial with the same values: the same records.
    assert set(half) <= set(subset(1.0, 0))
    assert half != subset(0.5, 1)  # The seed picks another subset.


def test_build_and_fit_on_the_toy_task(searched):
    _, first_fits, second_fits, report = searched
    rows = {r["trial_id"]: r for r in report.rows}
    completed = [r for r in rows.values() if r["status"] == "COMPLETED"]
    assert len(completed) == 3
    for row in completed:
        assert 0.0 <= row["val_label_accuracy"] <= 1.0
        assert row["train_steps"] == TINY["steps"]
        assert row["train_examples"] == int(32 * row["train_fraction"])
        assert (row["alpha"] is None) == (row["mode"] == "standard")


def test_resume_does_not_retrain_finished_trials(searched):
    project, first_fits, second_fits, report = searched
    assert len(first_fits) == 2  # Trial 0 finished, trial 1 interrupted.
    finished, interrupted = map(key, first_fits)
    second = [key(v) for v in second_fits]
    assert finished not in second
    assert second[0] == interrupted  # The interrupted trial runs again first,
    assert len(second) == 2  # then one new trial: 3 trials in all.
    assert len({key(v) for v in first_fits + second_fits}) == 3


def test_rerun_with_other_settings_is_refused(searched):
    project = searched[0]
    with pytest.raises(ValueError, match=r"\(space differ"):
        tuning.tune(hypermodel(alphas=[0.3]), project, search="grid")
    with pytest.raises(ValueError, match=r"\(search differ"):
        tuning.tune(hypermodel(), project, search="random")


def test_reports_csv_json_and_plots(searched):
    project, _, _, report = searched
    with open(os.path.join(project, "trials.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["trial_id"] for r in rows] == [r["trial_id"] for r in report.rows]
    assert list(rows[0]) == list(tuning.COLUMNS)
    with open(os.path.join(project, "trials.json")) as f:
        data = json.load(f)
    assert data["objective"] == {"name": "val_label_accuracy", "direction": "max"}
    assert data["best"]["val_label_accuracy"] == max(
        r["val_label_accuracy"] for r in data["trials"])
    for name in ("accuracy_by_fraction.png", "accuracy_by_alpha.png") * HAS_MATPLOTLIB:
        with open(os.path.join(project, name), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Any accuracy reaches 0: the answer is the smallest fraction tried per mode.
    for mode, entry in report.smallest.items():
        tried = [r["train_fraction"] for r in report.rows if r["mode"] == mode]
        assert entry["train_fraction"] == min(tried)


def test_report_only_cli(searched, capsys):
    project = searched[0]
    assert cli.main(["tune", "--report-only", "--project-dir", project, "--no-plots",
                        "--target-accuracy", "0.99"]) == 0
    output = capsys.readouterr().out
    assert "3 trials: 3 completed" in output
    assert "no fraction tried reaches it" in output


def test_best_by_fraction_and_smallest_fraction_average_seeds(tmp_path):
    def row(mode, alpha, fraction, seed, accuracy):
        return dict(trial_id=str(len(rows)), status="COMPLETED", mode=mode, alpha=alpha,
                    train_fraction=fraction, learning_rate=1e-3, seed=seed,
                    val_label_accuracy=accuracy, train_examples=None, train_steps=None,
                    message=None)

    rows = []
    for values in [("distill_step_by_step", 0.1, 0.25, 0, 0.9),
                   ("distill_step_by_step", 0.1, 0.25, 1, 0.1),  # mean 0.5
                   ("distill_step_by_step", 0.5, 0.25, 0, 0.6),
                   ("distill_step_by_step", 0.5, 0.25, 1, 0.6),  # mean 0.6: best
                   ("distill_step_by_step", 0.5, 1.0, 0, 0.8),
                   ("standard", None, 0.25, 0, 0.3),
                   ("standard", None, 1.0, 0, 0.7)]:
        rows.append(row(*values))
    rows.append(dict(rows[0], trial_id="99", status="FAILED", val_label_accuracy=None))
    best = tuning.best_by_fraction(rows)
    dss_quarter = best[0]
    assert (dss_quarter["alpha"], dss_quarter["num_seeds"]) == (0.5, 2)
    assert dss_quarter["val_label_accuracy"] == pytest.approx(0.6)
    assert tuning.smallest_fraction(rows, 0.6, "distill_step_by_step")["train_fraction"] == 0.25
    assert tuning.smallest_fraction(rows, 0.6, "standard")["train_fraction"] == 1.0
    assert tuning.smallest_fraction(rows, 0.75)["mode"] == "distill_step_by_step"
    assert tuning.smallest_fraction(rows, 0.95) is None
    pytest.importorskip("matplotlib")
    paths = tuning.plot_trials(rows, str(tmp_path), target_accuracy=0.6)
    assert all(os.path.getsize(p) > 1000 for p in paths)


def test_failed_trials_are_recorded_and_the_search_goes_on(tmp_path):
    model = hypermodel(fail=True, modes=["standard"])
    report = tuning.tune(model, str(tmp_path / "project"), search="random", plots=False)
    assert len(model.fits) == 2  # Both fractions tried despite the first failure.
    assert [r["status"] for r in report.rows] == ["FAILED", "FAILED"]
    assert report.rows[0]["message"] == "ValueError: boom"
    assert report.best is None


def test_bayesian_search_needs_its_extras(tmp_path):
    pytest.importorskip("sklearn")
    tuner = tuning.make_tuner(hypermodel(), str(tmp_path / "project"), search="bayesian")
    assert tuner.oracle.objective.direction == "max"
    assert tuner.oracle.max_trials == 4


def test_cli_flags_parse_into_a_base_config():
    args = cli.build_parser().parse_args(
        ["tune", "--data", "word_problems:40", "--alphas", "0.2,0.4", "--train-fractions",
         "0.5,1", "--modes", "distill_step_by_step,standard", "--steps", "7",
         "--hidden-dim", "8", "--search", "grid", "--target-accuracy", "0.5"])
    assert (args.alphas, args.train_fractions, args.steps, args.hidden_dim) == (
        [0.2, 0.4], [0.5, 1.0], 7, 8)
    assert not hasattr(args, "alpha") and not hasattr(args, "run_dir")
    splits = load_splits(TrainConfig.from_args(args))
    assert (len(splits.train), len(splits.validation)) == (36, 4)


@pytest.mark.parametrize("flags, message", [
    (["--alpha", "0.3"], "unrecognized arguments: --alpha"),
    (["--validation-fraction", "0"], "needs validation records"),
    (["--modes", "distill"], "unknown mode 'distill'"),
])
def test_cli_rejects_flags_that_a_trial_would_not_honour(flags, message, tmp_path, capsys):
    argv = ["tune", "--data", "word_problems:20", "--project-dir", str(tmp_path / "p"), *flags]
    try:
        cli.main(argv)
    except SystemExit as exit_info:
        assert exit_info.code == 2
        assert message in capsys.readouterr().err
    except ValueError as error:
        assert message in str(error)
    else:
        pytest.fail("no error")


# --- distributed: a chief and two workers over loopback ----------------------------------

WORKER_SCRIPT = textwrap.dedent("""
    import os, sys
    from dss_keras import testing, tuning
    from dss_keras.config import TrainConfig
    from dss_keras.data import Splits

    class EagerHyperModel(tuning.DSSHyperModel):
        def build(self, hp):
            model = super().build(hp)
            model.compile(optimizer=model.optimizer, run_eagerly=True)
            return model

        def fit(self, hp, model, *args, **kwargs):
            print("FIT", os.environ["KERASTUNER_TUNER_ID"], hp.values, flush=True)
            return super().fit(hp, model, *args, **kwargs)

    model = EagerHyperModel(
        TrainConfig(**{tiny!r}), Splits(testing.toy_records(32), testing.toy_records(8, seed=1), []),
        alphas=[0.5], train_fractions=[0.5, 1.0], modes=["distill_step_by_step", "standard"])
    report = tuning.tune(model, sys.argv[1], search="grid", max_trials=3)
    print("DONE", "no report" if report is None else len(report.rows), flush=True)
""").format(tiny=TINY)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_distributed_search_chief_and_two_workers(tmp_path):
    script = tmp_path / "search.py"
    script.write_text(WORKER_SCRIPT)
    project = str(tmp_path / "project")
    env = dict(os.environ, KERASTUNER_ORACLE_IP="127.0.0.1",
               KERASTUNER_ORACLE_PORT=str(free_port()), TF_CPP_MIN_LOG_LEVEL="3",
               KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    processes, logs = {}, {}
    try:
        for tuner_id in ("chief", "tuner0", "tuner1"):
            logs[tuner_id] = open(tmp_path / f"{tuner_id}.log", "w+")
            processes[tuner_id] = subprocess.Popen(
                [sys.executable, "-W", "ignore", str(script), project],
                env=dict(env, KERASTUNER_TUNER_ID=tuner_id), cwd=REPO,
                stdout=logs[tuner_id], stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        for tuner_id, process in processes.items():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
        outputs = {}
        for tuner_id, log in logs.items():
            log.seek(0)
            outputs[tuner_id] = log.read()
        for tuner_id, process in processes.items():
            assert process.returncode == 0, f"{tuner_id} failed:\n{outputs[tuner_id][-3000:]}"
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
        for log in logs.values():
            log.close()
    fits = {tuner_id: output.count("FIT ") for tuner_id, output in outputs.items()}
    assert fits["chief"] == 0 and fits["tuner0"] + fits["tuner1"] == 3, fits
    assert "DONE 3" in outputs["chief"]
    assert "DONE no report" in outputs["tuner0"] and "DONE no report" in outputs["tuner1"]
    with open(os.path.join(project, "trials.json")) as f:
        trials = json.load(f)["trials"]
    assert [t["status"] for t in trials] == ["COMPLETED"] * 3
    assert len({(t["mode"], t["train_fraction"]) for t in trials}) == 3


@pytest.mark.slow
def test_a_tuned_trial_is_reproduced_by_dss_keras_train(tmp_path, capsys):
    """`dss-keras train` with a trial's values: the same vocabulary file, the same accuracy."""
    base = ["--data", "word_problems:48", "--validation-fraction", "0.25",
            *[f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]]
    project = tmp_path / "project"
    assert cli.main(["tune", *base, "--project-dir", str(project), "--search", "grid",
                     "--alphas", "0.3", "--train-fractions", "0.5", "--seeds", "4",
                     "--learning-rates", "0.003", "--no-plots"]) == 0
    with open(project / "trials.json") as f:
        (trial,) = json.load(f)["trials"]
    assert trial["status"] == "COMPLETED"

    run_dir = tmp_path / "run"
    assert cli.main(["train", *base, "--run-dir", str(run_dir), "--mode", trial["mode"],
                     "--alpha", str(trial["alpha"]), "--train-fraction",
                     str(trial["train_fraction"]), "--seed", str(trial["seed"]),
                     "--learning-rate", str(trial["learning_rate"])]) == 0
    assert (run_dir / "vocabulary.spm").read_bytes() == (project / "vocabulary.spm").read_bytes()
    with open(run_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["data"]["num_examples"] == trial["train_examples"] == 18
    assert metrics["validation"]["accuracy"] == pytest.approx(trial["val_label_accuracy"])
    assert metrics["history"]["val_label_accuracy"][-1] == pytest.approx(
        trial["val_label_accuracy"])
