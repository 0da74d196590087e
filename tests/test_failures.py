"""Bad input, wrong flags and crashes: each fails early and clearly, and no run is stranded or lost.

One test per case of the robustness review (numbered as there), then kills at
random moments.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from dss_keras import cli, testing
from dss_keras.backup import Backup
from dss_keras.config import TrainConfig
from dss_keras.data import Splits, write_jsonl
from dss_keras.data.records import Record

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(
    steps=6, eval_every=2, batch_size=4, vocabulary_size=150, hidden_dim=16,
    intermediate_dim=32, num_layers=1, num_heads=2, max_input_length=48,
    max_label_length=4, max_rationale_length=12,
)
TINY_FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]


def run_cli(capsys, *argv):
    """`dss-keras ARGV` in this process: (exit status, stderr)."""
    try:
        status = cli.main(list(argv))
    except SystemExit as exit_info:
        status = exit_info.code
    return status, capsys.readouterr().err


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("dss-keras: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def train_file(tmp_path):
    path = tmp_path / "train.jsonl"
    write_jsonl(testing.toy_records(24), path)
    return str(path)


# --- 1-3: data errors name the file and line; nothing is written --------------------


def test_1_csv_row_with_a_missing_column_is_an_error(tmp_path, capsys):
    csv_path = tmp_path / "train.csv"
    csv_path.write_text("id,input\n1,Dee has 3 rocks.\n", encoding="utf-8")
    status, err = run_cli(capsys, "train", "--train-file", str(csv_path),
                          "--run-dir", str(tmp_path / "run"), *TINY_FLAGS)
    assert status == 1
    assert f'{csv_path}:1: field "label": missing column' in one_error_line(err)
    csv_path.write_text("id,input,label\n1,a,b\n2,a\n", encoding="utf-8")
    status, err = run_cli(capsys, "train", "--train-file", str(csv_path),
                          "--run-dir", str(tmp_path / "run"), *TINY_FLAGS)
    assert status == 1 and f'{csv_path}:3: field "label": missing cell' in one_error_line(err)
    assert not os.path.exists(tmp_path / "run")


def test_2_bytes_that_are_not_utf8_name_file_and_line(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    lines = [json.dumps(r.to_dict()).encode() for r in testing.toy_records(8)]
    lines[6] = lines[6].replace(b"has", b"h\xe4s", 1)
    path.write_bytes(b"\n".join(lines) + b"\n")
    status, err = run_cli(capsys, "train", "--train-file", str(path),
                          "--run-dir", str(tmp_path / "run"), *TINY_FLAGS)
    assert status == 1
    assert f"{path}:7: not valid UTF-8: byte 0xe4" in one_error_line(err)


def test_3_an_empty_training_file_fails_before_any_vocabulary(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    path.write_text("\n", encoding="utf-8")
    status, err = run_cli(capsys, "train", "--train-file", str(path),
                          "--run-dir", str(tmp_path / "run"), *TINY_FLAGS)
    assert status == 1 and f"{path}: no records to train on" in one_error_line(err)
    assert not os.path.exists(tmp_path / "run")


# --- 4-6: the run directory is claimed only when training can start --------------------


@pytest.mark.slow
def test_4_a_typo_writes_nothing_and_the_corrected_command_runs(tmp_path, train_file, capsys):
    run_dir = str(tmp_path / "run")
    typo = train_file.replace("train.jsonl", "trian.jsonl")
    status, err = run_cli(capsys, "train", "--train-file", typo, "--run-dir", run_dir,
                          *TINY_FLAGS)
    assert status == 1 and f"{typo}: No such file or directory" in one_error_line(err)
    status, err = run_cli(capsys, "train", "--train-file", train_file, "--run-dir", run_dir,
                          *TINY_FLAGS, "--max-input-length", "0")
    assert status == 2 and "`max_input_length` must be a whole number" in err
    assert not os.path.exists(run_dir)
    # A claim that never trained (say, killed while training the vocabulary) is taken over.
    os.makedirs(run_dir)
    TrainConfig(train_file=train_file, run_dir=run_dir, alpha=0.9).save(
        os.path.join(run_dir, "config.json"))
    (tmp_path / "run" / "vocabulary.spm").write_bytes(b"stale")
    status, err = run_cli(capsys, "train", "--train-file", train_file, "--run-dir", run_dir,
                          *TINY_FLAGS)
    assert status == 0, err
    assert TrainConfig.load(os.path.join(run_dir, "config.json")).alpha == 0.5
    assert (tmp_path / "run" / "vocabulary.spm").read_bytes() != b"stale"
    # Once trained, another config is refused and the run is kept.
    status, err = run_cli(capsys, "train", "--train-file", train_file, "--run-dir", run_dir,
                          *TINY_FLAGS, "--alpha", "0.2")
    assert status == 1 and "holds a run with another config (fields alpha differ)" in err
    assert os.path.exists(os.path.join(run_dir, "model.keras"))


@pytest.mark.slow
def test_5_relative_spellings_of_a_path_are_the_same_run(tmp_path, train_file, capsys,
                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run_cli(capsys, "train", "--train-file", "train.jsonl", "--run-dir", "runs/base",
                   *TINY_FLAGS)[0] == 0
    saved = TrainConfig.load(tmp_path / "runs" / "base" / "config.json")
    assert saved.run_dir == os.path.realpath(tmp_path / "runs" / "base")
    assert saved.train_file == os.path.realpath(train_file)
    status, err = run_cli(capsys, "train", "--train-file", "./train.jsonl", "--run-dir",
                          "./runs/base", *TINY_FLAGS)
    assert status == 0, err  # the finished run, not "another config"


def test_6_a_run_dir_that_is_a_file_is_named(tmp_path, train_file, capsys):
    path = tmp_path / "run"
    path.write_text("not a folder")
    status, err = run_cli(capsys, "train", "--train-file", train_file, "--run-dir", str(path),
                          *TINY_FLAGS)
    assert status == 1
    assert f"{path}: is a file, not a run directory" in one_error_line(err)


# --- 7: an unscorable gold label ----------------------------------------------------------


@pytest.mark.slow
def test_7_evaluate_names_the_unscorable_gold_equation(tmp_path, capsys):
    model = testing.tiny_model()
    model.save(tmp_path / "model.keras")
    records = [Record("1", "Ana has 3 cups.", "( 3.0 + 1.0 )"),
               Record("2", "Bo has 2 hats.", "( two + 1.0 )")]
    write_jsonl(records, tmp_path / "test.jsonl")
    status, err = run_cli(capsys, "evaluate", str(tmp_path / "model.keras"), "--file",
                          str(tmp_path / "test.jsonl"), "--metric", "svamp")
    assert status == 1
    assert (f'{tmp_path / "test.jsonl"}:2: field "label": the gold equation '
            "'( two + 1.0 )' has no value") in one_error_line(err)


# --- 8-9: crash safety of the backup, history across resumes ------------------------------


class Crash(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise RuntimeError("simulated crash")


def _weights(model):
    return [np.array(w) for w in model.get_weights()]


@pytest.mark.slow
def test_8_9_a_torn_backup_is_skipped_and_history_spans_resumes(tmp_path, caplog):
    from dss_keras.training import train

    records = testing.toy_records(24)
    splits = Splits(records[:20], records[20:], [])
    reference = train(TrainConfig(run_dir=str(tmp_path / "reference"), **TINY), splits,
                      verbose=0)
    for torn in ("state.json", "model.keras"):
        run_dir = tmp_path / f"torn-{torn}"
        config = TrainConfig(run_dir=str(run_dir), **TINY)
        with pytest.raises(RuntimeError, match="simulated crash"):
            train(config, splits, callbacks=[Crash(at_epoch=1)], verbose=0)
        generations = Backup(str(run_dir / "backup")).generations()
        assert [os.path.basename(g) for g in generations] == ["epoch-000002", "epoch-000001"]
        path = os.path.join(generations[0], torn)
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) // 2)
        with caplog.at_level("WARNING", logger="dss_keras.backup"):
            result = train(config, splits, verbose=0)
        assert "Skipping the damaged backup" in caplog.text and "epoch-000002" in caplog.text
        caplog.clear()
        # Resumed from epoch 1, the run ends as if it had never stopped.
        for got, want in zip(_weights(result.model), _weights(reference.model)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        history = result.metrics["history"]
        assert len(history["loss"]) == 3 and len(history["val_label_accuracy"]) == 3
        np.testing.assert_allclose(history["loss"], reference.metrics["history"]["loss"],
                                   rtol=1e-5)
        assert result.metrics["train_seconds"] > 0
        assert os.listdir(run_dir / "backup") == ["epoch-000003"]  # kept to rebuild the model


# --- 10: exports readable by another user, abandoned staging removed ----------------------


@pytest.mark.slow
def test_10_exports_are_world_readable_and_abandoned_staging_goes(tmp_path):
    from dss_keras.export import export_for_serving

    export_dir = tmp_path / "saved"
    dead = export_dir / ".tmp-1-999999-abc"  # no process 999999 here: abandoned
    dead.mkdir(parents=True)
    path = export_for_serving(testing.tiny_model(), str(export_dir))
    assert not dead.exists()
    modes = {os.stat(os.path.join(folder, name)).st_mode & 0o777
             for folder, names, files in os.walk(path) for name in names + files}
    dirs = {os.stat(folder).st_mode & 0o777 for folder, _, _ in os.walk(path)}
    assert dirs == {0o755} and modes <= {0o755, 0o644} and 0o644 in modes


# --- 11: distilling step-by-step without any rationale ---------------------------------------


def test_11_distill_without_rationales_stops_and_empty_losses_are_nan(tmp_path, capsys):
    path = tmp_path / "train.jsonl"
    write_jsonl([Record(r.id, r.input, r.label) for r in testing.toy_records(12)], path)
    status, err = run_cli(capsys, "train", "--train-file", str(path), "--run-dir",
                          str(tmp_path / "run"), *TINY_FLAGS)
    assert status == 1 and "learns from rationales, and none of the" in one_error_line(err)
    assert "mode 'standard'" in err and not os.path.exists(tmp_path / "run")
    from dss_keras.metrics import TokenMean

    metric = TokenMean()
    assert np.isnan(float(metric.result()))
    metric.update_state(0.0, 0.0)
    assert np.isnan(float(metric.result()))
    metric.update_state(3.0, 2.0)
    assert float(metric.result()) == 1.5


# --- 12: the CLI speaks in one line and exit codes ------------------------------------------


def test_12_usage_errors_exit_2_failures_exit_1(tmp_path, capsys):
    status, err = run_cli(capsys, "train", "--alpha", "2", "--train-file", "x.jsonl")
    assert status == 2 and "`alpha` must be in [0, 1]" in err
    status, err = run_cli(capsys, "evaluate", str(tmp_path), "--file", "x.jsonl")
    assert status == 1 and "no trained model here" in one_error_line(err)
    model = testing.tiny_model()
    with pytest.raises(ValueError, match="`batch_size` must be a whole number, at least 1"):
        model.predict_labels(["Ana has 3 cups."], batch_size=0)


@pytest.mark.slow
def test_12_a_subprocess_shows_one_line_or_the_traceback_when_asked(tmp_path):
    argv = [sys.executable, "-m", "dss_keras.cli", "train", "--train-file",
            str(tmp_path / "missing.jsonl"), "--run-dir", str(tmp_path / "run")]
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("DSS_KERAS_TRACEBACK", None)
    quiet = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [
        f"dss-keras: error: {tmp_path / 'missing.jsonl'}: No such file or directory"]
    loud = subprocess.run(argv + ["--traceback"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert loud.returncode == 1 and "Traceback (most recent call last)" in loud.stderr
    # Bytes that are not UTF-8 in a text argument are a usage error, not a traceback.
    model_dir = tmp_path / "model.keras"
    bad = subprocess.run([os.fsencode(sys.executable), b"-m", b"dss_keras.cli", b"predict",
                          os.fsencode(model_dir), b"caf\xe9"], env=env, capture_output=True,
                         timeout=300)
    assert bad.returncode == 2 and b"text argument 1 is not valid UTF-8" in bad.stderr


# --- kills at random moments -----------------------------------------------------------------


@pytest.mark.slow
def test_three_kills_in_a_row_end_in_one_run_with_every_epoch_once(tmp_path):
    """SIGKILL a `dss-keras train` three times at random moments, then let it finish."""
    flags = ["--data", "word_problems:64", "--validation-fraction", "0.25", *TINY_FLAGS,
             "--steps", "12"]
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")

    def command(run_dir):
        return [sys.executable, "-m", "dss_keras.cli", "train", *flags, "--run-dir",
                str(run_dir)]

    reference = subprocess.run(command(tmp_path / "reference"), env=env, capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    run_dir = tmp_path / "killed"
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(command(run_dir), env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            time.sleep(rng.uniform(6.0, 20.0))
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
    final = subprocess.run(command(run_dir), env=env, capture_output=True, text=True,
                           timeout=600)
    assert final.returncode == 0, final.stderr[-2000:]
    with open(tmp_path / "reference" / "metrics.json") as f:
        want = json.load(f)
    with open(run_dir / "metrics.json") as f:
        got = json.load(f)
    assert len(got["history"]["loss"]) == 6  # every epoch once
    np.testing.assert_allclose(got["history"]["loss"], want["history"]["loss"], rtol=1e-5)
    assert got["validation"] == pytest.approx(want["validation"])


# --- 13: Ctrl-C however early is one line and exit status 130 --------------------------------


@pytest.mark.parametrize("where", ["build_parser", "_prepare_tensorflow"])
def test_13_ctrl_c_while_the_command_starts_is_one_line(monkeypatch, capsys, where):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, where, interrupt)
    assert cli.main(["predict", "runs/mine", "Ana has 3 cups."]) == 130
    assert capsys.readouterr().err == "dss-keras: interrupted\n"


def test_13_ctrl_c_as_the_early_handler_hands_over_is_one_line(monkeypatch, capsys):
    """`dss-keras` keeps a Ctrl-C that comes while it imports; one that comes just as `main`
    puts Python's handler back is reported too."""
    install = signal.signal

    def hand_over_then_ctrl_c(signum, handler):
        previous = install(signum, handler)
        if handler is signal.default_int_handler and previous is cli._keep_interrupt:
            raise KeyboardInterrupt  # the Ctrl-C, right after Python's handler is back
        return previous

    original = install(signal.SIGINT, cli._keep_interrupt)
    try:
        monkeypatch.setattr(signal, "signal", hand_over_then_ctrl_c)
        try:
            status = cli.main(["predict", "runs/mine", "Ana has 3 cups."])
        except KeyboardInterrupt:
            pytest.fail("the Ctrl-C escaped `main` as a traceback")
        assert status == 130
    finally:
        monkeypatch.undo()
        install(signal.SIGINT, original)
    assert capsys.readouterr().err == "dss-keras: interrupted\n"


def _tensorflow_loading(pid: int) -> bool:
    with open(f"/proc/{pid}/maps", encoding="utf-8") as maps:
        return "libtensorflow" in maps.read()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads /proc/<pid>/maps")
@pytest.mark.parametrize("moment", ["cli imported", "tensorflow loading", "1.5 s later",
                                    "4 s later"])
def test_13_ctrl_c_at_any_moment_of_a_subprocess_is_one_line(tmp_path, moment):
    """SIGINT once the command runs: as its imports finish, within TensorFlow's, and after."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("DSS_KERAS_TRACEBACK", None)
    process = subprocess.Popen(
        [sys.executable, "-X", "importtime", "-m", "dss_keras.cli", "train", "--data",
         "word_problems:64", *TINY_FLAGS, "--run-dir", str(tmp_path / "run")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        if moment == "cli imported":  # `-X importtime` names each module as it is imported
            for line in process.stderr:
                if line.rstrip().endswith("| dss_keras.config"):
                    break
        else:
            deadline = time.monotonic() + 120
            while not _tensorflow_loading(process.pid):
                assert process.poll() is None and time.monotonic() < deadline
                time.sleep(0.002)
            time.sleep({"tensorflow loading": 0.0, "1.5 s later": 1.5, "4 s later": 4.0}[moment])
        process.send_signal(signal.SIGINT)
        err = process.stderr.read()
        assert process.wait(timeout=120) == 130, err
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        process.stderr.close()
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert lines == ["dss-keras: interrupted"], err[-3000:]
