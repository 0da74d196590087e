"""The backup on a full disk: one line that names the directory, no crash, and the rerun resumes.

`dss-keras train` runs in a subprocess, as a user runs it: a failure inside
HDF5 (which h5py cannot recover from) would end it with a segmentation fault,
not an exit status of 1. A full disk is a tmpfs where one can be mounted (it
needs root), filled while the run trains; a file size limit (`ulimit -f`)
fails a write in the same way anywhere.
"""

import errno
import json
import os
import re
import resource
import signal
import subprocess
import sys
import time

import pytest

from dss_keras import files, testing
from dss_keras.backup import Backup, BackupState, estimated_size

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--data", "word_problems:96", "--validation-fraction", "0.25",
         *testing.tiny_run_flags(), "--steps", "6"]
# `dss-keras train` with the room check of the backup switched off: the write itself fails.
WITHOUT_ROOM_CHECK = ("import sys, dss_keras.backup as b; b.check_room = lambda *a, **k: None; "
                      "from dss_keras import cli; sys.exit(cli.main(sys.argv[1:]))")


def train_command(run_dir, *, room_check=True) -> list[str]:
    start = ["-m", "dss_keras.cli"] if room_check else ["-c", WITHOUT_ROOM_CHECK]
    return [sys.executable, *start, "train", *FLAGS, "--run-dir", str(run_dir)]


def environment() -> dict:
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("DSS_KERAS_TRACEBACK", None)
    return env


def error_lines(stderr: str) -> list[str]:
    """The lines a user reads (Keras' progress and Python warnings aside)."""
    assert "Traceback" not in stderr and "h5py" not in stderr, stderr[-3000:]
    return [line for line in stderr.splitlines() if line.startswith("dss-keras:")]


def staging_left(run_dir) -> list[str]:
    return [os.path.join(folder, name) for folder, names, file_names in os.walk(run_dir)
            for name in names + file_names if name.startswith(".tmp-")]


def epochs_trained(stdout: str) -> list[str]:
    return [line.split()[1] for line in stdout.splitlines() if line.startswith("Epoch ")]


@pytest.fixture
def tmpfs(tmp_path):
    """A 64 MB tmpfs under `tmp_path` (skipped where this process cannot mount one)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs",
                              str(mount_point)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def fill(mount_point, leave: int) -> str:
    """A file that leaves `leave` bytes free on `mount_point`."""
    path = os.path.join(mount_point, "filler")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.posix_fallocate(fd, 0, max(1, files.free_bytes(str(mount_point)) - leave))
    finally:
        os.close(fd)
    return path


@pytest.mark.slow
def test_a_full_disk_stops_training_in_one_line_and_the_rerun_resumes(tmpfs):
    run_dir = tmpfs / "run"
    env = environment()
    first = subprocess.Popen(train_command(run_dir), env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    backup = Backup(str(run_dir / "backup"))
    deadline = time.monotonic() + 300
    while not backup.generations():
        assert first.poll() is None and time.monotonic() < deadline, first.communicate()
        time.sleep(0.01)
    generation = backup.generations()[0]
    size = sum(os.path.getsize(os.path.join(generation, n)) for n in os.listdir(generation))
    filler = fill(tmpfs, size // 2)  # room for the logs, not for another generation
    out, err = first.communicate(timeout=300)
    assert first.returncode == 1, err[-3000:]
    (line,) = error_lines(err)
    assert re.fullmatch(
        rf"dss-keras: error: {re.escape(str(run_dir / 'backup'))}: no room for the backup of "
        r"epoch 2 \(needs about [\d.]+ KB, [\d.]+ KB free\); free some space there and rerun "
        "the same command: it resumes from the last backup", line), line
    assert [os.path.basename(g) for g in backup.generations()] == ["epoch-000001"]

    # Were the room check wrong, the write itself fails: the same line, and no crash.
    second = subprocess.run(train_command(run_dir, room_check=False), env=env,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 1, second.stderr[-3000:]
    assert error_lines(second.stderr) == [
        f"dss-keras: error: {run_dir / 'backup'}: could not write the backup of epoch 2 (No "
        "space left on device); free some space there and rerun the same command: it resumes "
        "from the last backup"]
    assert staging_left(run_dir) == []
    assert [os.path.basename(g) for g in backup.generations()] == ["epoch-000001"]

    os.remove(filler)
    final = subprocess.run(train_command(run_dir), env=env, capture_output=True, text=True,
                           timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    assert epochs_trained(final.stdout) == ["2/3", "3/3"]  # epoch 1 was not lost
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert len(history["loss"]) == 3 and staging_left(run_dir) == []


def _limit_file_size(limit: int):
    def limit_in_child():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_in_child


@pytest.mark.slow
def test_a_backup_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path):
    """No root needed: a file size limit fails the write of the first generation."""
    run_dir = tmp_path / "run"
    # Room for the vocabulary and the logs (~240 KB), not for a generation (~850 KB).
    limited = subprocess.run(train_command(run_dir), env=environment(), capture_output=True,
                             text=True, timeout=300, preexec_fn=_limit_file_size(512 << 10))
    assert limited.returncode == 1, limited.stderr[-3000:]
    assert error_lines(limited.stderr) == [
        f"dss-keras: error: {run_dir / 'backup'}: could not write the backup of epoch 1 (File "
        "too large); raise the file size limit (ulimit -f) and rerun the same command: it "
        "resumes from the last backup"]
    assert staging_left(run_dir) == [] and Backup(str(run_dir / "backup")).generations() == []


def test_no_room_is_found_before_anything_is_written(tmp_path, monkeypatch):
    model = testing.tiny_model()
    backup = Backup(str(tmp_path / "backup"))
    monkeypatch.setattr(files, "free_bytes", lambda directory: 1000)
    with pytest.raises(OSError) as raised:
        backup.save(model, BackupState(1, {}, 0.0))
    assert raised.value.errno == errno.ENOSPC
    assert raised.value.filename == str(tmp_path / "backup")
    assert raised.value.strerror.startswith("no room for the backup of epoch 1 (needs about ")
    assert os.listdir(tmp_path / "backup") == []


def test_a_failed_write_leaves_no_staging_and_the_next_one_clears_a_dead_writers(
        tmp_path, monkeypatch):
    model = testing.tiny_model()
    backup = Backup(str(tmp_path / "backup"))
    dead = tmp_path / "backup" / ".tmp-000001-999999999-abc"  # no such process: abandoned
    dead.mkdir(parents=True)

    def full_disk(self, path, *args, **kwargs):
        open(path, "wb").write(b"PK")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(type(model), "save", full_disk)
    with pytest.raises(OSError, match="could not write the backup of epoch 2"):
        backup.save(model, BackupState(2, {}, 0.0))
    assert os.listdir(tmp_path / "backup") == []


def test_the_estimate_covers_a_generation(tmp_path):
    model = testing.tiny_model()
    backup = Backup(str(tmp_path / "backup"))
    path = backup.save(model, BackupState(1, {}, 0.0))
    written = sum(os.path.getsize(os.path.join(path, n)) for n in os.listdir(path))
    assert written < estimated_size(model) < 2 * written
    assert written < backup.needed_bytes(model) < 1.2 * written  # the last one's size
