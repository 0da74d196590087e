"""One trainer per run directory: a second one is refused with the first's pid, the lock of a
process that died is taken over, and the commands that read a run say that it still trains."""

import errno
import os
import signal
import subprocess
import sys
import time

import pytest

from dss_keras import run_lock, testing
from dss_keras.run_lock import RunDirectoryBusy, RunLock

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = ("import sys, time; from dss_keras.run_lock import RunLock; "
        "RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")


def environment() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("DSS_KERAS_TRACEBACK", None)
    return env


@pytest.fixture
def other_trainer(tmp_path):
    """Another process that holds the lock of `tmp_path` (as a trainer would)."""
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], env=environment(),
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)
        process.stdout.close()


def test_a_second_process_is_refused_with_the_pid_of_the_first(tmp_path, other_trainer):
    with pytest.raises(RunDirectoryBusy) as refused:
        RunLock(str(tmp_path)).acquire()
    assert str(refused.value) == (
        f"{tmp_path}: pid {other_trainer.pid} is training in this run directory; wait for it "
        "to finish (or stop it), then rerun.")
    assert run_lock.holder(str(tmp_path)).pid == other_trainer.pid


def test_the_lock_of_a_process_that_died_is_taken_over(tmp_path, other_trainer, caplog):
    other_trainer.send_signal(signal.SIGKILL)
    other_trainer.wait(timeout=30)
    assert os.path.exists(tmp_path / run_lock.LOCK)  # left behind, with the dead pid
    assert run_lock.holder(str(tmp_path)) is None
    with caplog.at_level("WARNING", logger="dss_keras.run_lock"):
        lock = RunLock(str(tmp_path)).acquire()
    assert f"taking over the lock left by pid {other_trainer.pid}" in caplog.text
    assert run_lock.holder(str(tmp_path)).pid == os.getpid()
    lock.release()
    assert not os.path.exists(tmp_path / run_lock.LOCK)
    assert run_lock.holder(str(tmp_path)) is None


def test_a_read_only_run_directory_is_read_without_a_lock(tmp_path, monkeypatch):
    def read_only(path, flags, *args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "open", read_only)
    lock = RunLock(str(tmp_path)).acquire()
    assert not lock.held
    lock.release()


def test_train_is_refused_and_readers_say_the_run_still_trains(tmp_path, other_trainer,
                                                              cli_error):
    status, line = cli_error("train", "--data", "word_problems:32",
                           *testing.tiny_run_flags(), "--run-dir", str(tmp_path))
    assert status == 1 and line == (
        f"dss-keras: error: {tmp_path}: pid {other_trainer.pid} is training in this run "
        "directory; wait for it to finish (or stop it), then rerun.")
    still = (f"dss-keras: error: {tmp_path}: still training (pid {other_trainer.pid}); its "
             "model.keras is written when training ends. Wait for it to finish.")
    (tmp_path / "test.jsonl").write_text("")
    for argv in (["predict", str(tmp_path), "Ana has 3 cups."],
                 ["evaluate", str(tmp_path), "--file", str(tmp_path / "test.jsonl")],
                 ["export", str(tmp_path), "--export-dir", str(tmp_path / "saved")]):
        assert cli_error(*argv) == (1, still)
    assert sorted(os.listdir(tmp_path)) == ["test.jsonl", run_lock.LOCK]  # nothing written


@pytest.mark.slow
def test_two_trainers_on_one_run_directory(tmp_path):
    """A real `dss-keras train`, and a second one and `predict` while it trains."""
    run_dir = tmp_path / "run"
    train = [sys.executable, "-m", "dss_keras.cli", "train", "--data", "word_problems:64",
             "--validation-fraction", "0.25", *testing.tiny_run_flags(), "--steps", "80",
             "--run-dir", str(run_dir)]
    first = subprocess.Popen(train, env=environment(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while run_lock.holder(str(run_dir)) is None:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        assert run_lock.holder(str(run_dir)).pid == first.pid
        second = subprocess.Popen(train, env=environment(), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        reader = subprocess.Popen(
            [sys.executable, "-m", "dss_keras.cli", "predict", str(run_dir), "Ana has 3 cups."],
            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        second_err, reader_err = second.communicate(timeout=300)[1], reader.communicate(
            timeout=300)[1]
        assert first.poll() is None, "the first run ended before the others were checked"
        assert second.returncode == 1 and second_err.strip().splitlines()[-1] == (
            f"dss-keras: error: {run_dir}: pid {first.pid} is training in this run directory; "
            "wait for it to finish (or stop it), then rerun.")
        assert reader.returncode == 1 and reader_err.strip().splitlines() == [
            f"dss-keras: error: {run_dir}: still training (pid {first.pid}); its model.keras is "
            "written when training ends. Wait for it to finish."]
        assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=30)
        first.stderr.close()
    assert run_lock.holder(str(run_dir)) is None and not (run_dir / run_lock.LOCK).exists()
    assert (run_dir / "metrics.json").exists()
