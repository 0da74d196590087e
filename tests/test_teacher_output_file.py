"""The output file: the lock first, nothing received held back, full disks, rewrites."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dss_keras.data.records import read_records
from dss_keras.teacher import extract
from dss_keras.teacher import output_file
from dss_keras.teacher.backends import Backend, Generation
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
from dss_keras.teacher.output_file import OutputLockedError
from dss_keras.teacher.testing_server import FakeOpenAIServer, Reply

from teacher_helpers import nli_complete, question, write_nli_inputs

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


class Scripted(Backend):
    """Answers like `nli_complete`, or with `bad` answers for the ids it is told."""

    model = "scripted"
    batch_size = 3

    def __init__(self, bad=(), on_call=None):
        self.bad, self.on_call, self.asked = set(bad), on_call, []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=None, stop=None):
        if self.on_call:
            self.on_call()
        out = []
        for p in prompts:
            self.asked.append(question(p.text))
            text = ("No idea.\nAnswer: maybe" if question(p.text) in self.bad
                    else nli_complete(p.text, 0).replace("maybe", "neutral"))
            out.append(Generation((text,) * n, ("stop",) * n,
                                  {"prompt_tokens": 10, "completion_tokens": 5}))
        return out


def _hold_lock(path):
    """A second process that holds the output's lock until killed."""
    code = ("import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1] + '.lock', os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX); os.ftruncate(fd, 0)\n"
            "os.write(fd, str(os.getpid()).encode())\n"
            "print('locked', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE)
    assert holder.stdout.readline().strip() == b"locked"
    return holder


def test_the_lock_comes_before_any_change_to_the_file(tmp_path):
    """Issue 36 case 4: a second extraction must not "repair" the other writer's last line."""
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 5)
    output = tmp_path / "out.jsonl"
    extract(inputs, output, "esnli", Scripted(), limit=2)
    with open(output, "ab") as f:
        f.write(b'{"id": "x2", "input": "the other writer is half way thr')
    before = output.read_bytes()
    holder = _hold_lock(output)
    try:
        with pytest.raises(OutputLockedError, match=rf"pid {holder.pid}\) is writing"):
            extract(inputs, output, "esnli", Scripted())
        assert output.read_bytes() == before
        assert not (tmp_path / "out.report.json").read_text().count('"written": 3')
    finally:
        holder.kill()
        holder.wait()
    # The writer died: its lock is free, and its torn line is cut and redone.
    report = extract(inputs, output, "esnli", Scripted())
    assert (report.written, report.skipped) == (3, 2)
    assert [r.id for r in read_records(output)] == [f"x{i}" for i in range(5)]


@pytest.mark.slow
def test_sigkill_loses_no_received_completion_whatever_order_it_finished_in(tmp_path):
    """Completions that finish ahead of a slower earlier one are on disk within a second."""
    count = 60
    inputs = write_nli_inputs(tmp_path / "in.jsonl", count)
    output = tmp_path / "out.jsonl"

    def script(prompt, attempt):  # the second input (after the lone first one) is slow
        return Reply(delay=60.0) if question(prompt) == "premise 1" else None

    with FakeOpenAIServer(complete=nli_complete, script=script, latency=0.02) as server:
        command = [sys.executable, "-m", "dss_keras.cli", "extract", "--task", "esnli",
                   "--input", inputs, "--output", str(output), "--model", "fake-model",
                   "--base-url", server.base_url, "--concurrency", "4", "--no-progress"]
        process = subprocess.Popen(command, env=ENV, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while sum(map(len, server.reply_times.values())) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(1.0)
        replied = {question(p) for p, times in server.reply_times.items() if times}
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    on_disk = {json.loads(line)["input"].split(" </s>")[0] for line in open(output)}
    assert "premise 1" not in on_disk and len(replied) >= 30
    assert replied <= on_disk, f"received but lost: {sorted(replied - on_disk)}"
    with FakeOpenAIServer(complete=nli_complete) as server:
        rerun = extract(inputs, output, "esnli",
                        OpenAIBackend("fake-model", base_url=server.base_url, concurrency=4))
    assert rerun.skipped == len(on_disk) and rerun.written == count - len(on_disk)
    ids = [r.id for r in read_records(output)]
    assert ids == [f"x{i}" for i in range(count)]  # each once, back in input order


def test_a_full_disk_names_the_file_and_a_rerun_recovers(tmp_path, monkeypatch):
    """Issue 36 case 6: the extraction's disk-full error names the file."""
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 9)
    output = tmp_path / "out.jsonl"
    real_write, calls = os.write, []

    def full_after_four(fd, data):
        calls.append(fd)
        if len(calls) > 4:  # half a line reaches the disk, then it is full
            real_write(fd, bytes(data[:20]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(output_file.os, "write", full_after_four)
    with pytest.raises(OSError) as raised:
        extract(inputs, output, "esnli", Scripted())
    monkeypatch.undo()
    assert raised.value.filename == str(output)
    assert "No space left on device while writing teacher records; free space" in str(raised.value)
    text = output.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 3  # whole lines only
    report = extract(inputs, output, "esnli", Scripted())
    assert (report.written, report.skipped) == (6, 3)
    assert [r.id for r in read_records(output)] == [f"x{i}" for i in range(9)]


def _tmpfs(path, size):
    path.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                            capture_output=True)
    if result.returncode:
        pytest.skip("no tmpfs can be mounted here (needs root)")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="tmpfs")
def test_a_real_full_disk_through_the_command(tmp_path):
    disk = tmp_path / "disk"
    _tmpfs(disk, "16k")
    try:
        inputs = write_nli_inputs(tmp_path / "in.jsonl", 40)
        output = disk / "out.jsonl"
        with FakeOpenAIServer(complete=nli_complete) as server:
            command = [sys.executable, "-m", "dss_keras.cli", "extract", "--task", "esnli",
                       "--input", inputs, "--output", str(output), "--model", "fake-model",
                       "--base-url", server.base_url, "--no-progress"]
            failed = subprocess.run(command, env=ENV, capture_output=True, text=True)
            assert failed.returncode == 1 and "Traceback" not in failed.stderr
            last = failed.stderr.splitlines()[-1]
            assert last.startswith(f"dss-keras: error: {output}: No space left on device "
                                   "while writing teacher records; free space")
            assert output.read_text().endswith("\n")
            subprocess.run(["mount", "-o", "remount,size=4m", str(disk)], check=True)
            done = subprocess.run(command, env=ENV, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert sorted(r.id for r in read_records(output)) == sorted(f"x{i}" for i in range(40))
    finally:
        subprocess.run(["umount", str(disk)])


def test_retry_failed_asks_again_and_keeps_each_id_once(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 8)
    output = tmp_path / "out.jsonl"
    first = extract(inputs, output, "esnli", Scripted(bad={"premise 2", "premise 5"}))
    assert first.parse_failures == {"label outside the label set": 2}

    def no_failed_and_no_duplicate():  # what a reader sees while the retry runs
        ids = [json.loads(line)["id"] for line in open(output)]
        assert len(ids) == len(set(ids)) and "x2" not in ids and "x5" not in ids

    backend = Scripted(on_call=no_failed_and_no_duplicate)
    again = extract(inputs, output, "esnli", backend, retry_failed=True)
    assert backend.asked == ["premise 2", "premise 5"]
    assert (again.retried, again.written, again.skipped) == (2, 2, 6)
    records = read_records(output)
    assert [r.id for r in records] == [f"x{i}" for i in range(8)]
    assert all(r.teacher["status"] == "ok" for r in records)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_report_is_saved_beside_the_output_and_adds_up_resumed_runs(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 10)
    output = tmp_path / "out.jsonl"
    extract(inputs, output, "esnli", Scripted(), limit=4)
    extract(inputs, output, "esnli", Scripted())
    saved = json.load(open(tmp_path / "out.report.json"))
    assert [run["written"] for run in saved["runs"]] == [4, 6]
    assert saved["totals"]["written"] == 10 and saved["totals"]["prompt_tokens"] == 100


def test_spending_limit_stops_cleanly_and_a_rerun_continues(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 30)
    output = tmp_path / "out.jsonl"
    with FakeOpenAIServer(complete=nli_complete, latency=0.01) as server:
        backend = OpenAIBackend("fake-model", base_url=server.base_url, concurrency=4)
        stopped = extract(inputs, output, "esnli", backend, max_spend_tokens=3000)
        spent = stopped.prompt_tokens + stopped.completion_tokens
        per_request = spent / stopped.requests
        assert stopped.stopped.startswith("spent") and 0 < stopped.written < 30
        assert spent >= 3000 and spent - 3000 <= 2 * 4 * per_request  # what was in flight
        assert "stopped early: spent" in str(stopped)
        rest = extract(inputs, output, "esnli",
                       OpenAIBackend("fake-model", base_url=server.base_url))
    assert rest.skipped == stopped.written and rest.written == 30 - stopped.written
    assert rest.stopped is None
    assert sorted(r.id for r in read_records(output)) == sorted(f"x{i}" for i in range(30))


def test_min_agreement_filters_self_consistent_samples(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 9)
    output = tmp_path / "out.jsonl"
    with FakeOpenAIServer(complete=nli_complete) as server:
        backend = OpenAIBackend("fake-model", base_url=server.base_url)
        report = extract(inputs, output, "esnli", backend, samples=3, filter="parsed",
                         min_agreement=0.5)
    parsed = [r for r in read_records(output) if r.llm_label is not None]
    # nli_complete gives three different labels: a third of the votes each.
    assert parsed and all(r.teacher["agreement"] == pytest.approx(1 / 3) for r in parsed)
    assert report.num_kept == 0 and report.below_agreement == len(parsed)
    with pytest.raises(ValueError, match="give `filter` 'parsed' or 'gold'"):
        extract(inputs, output, "esnli", Scripted(), min_agreement=0.5)


def test_outputs_written_under_the_old_version_names_resume(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 6)
    output = tmp_path / "out.jsonl"
    extract(inputs, output, "esnli", Scripted(), limit=3, prompt_version="esnli-v1")
    resumed = extract(inputs, output, "esnli", Scripted())
    assert (resumed.skipped, resumed.written) == (3, 3)
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"input": "A cat sleeps. </s> An animal rests.",
                                 "rationale": "A cat is an animal.", "label": "entailment"})
                     + "\n")
    with pytest.raises(ValueError, match="written with prompt_version"):
        extract(inputs, output, "esnli", Scripted(), demonstrations=demos)
