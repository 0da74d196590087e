"""Resumable, exactly-once teacher files; the CLI; the round trip into training."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dss_keras.data.records import RecordError, read_records
from dss_keras.teacher import extract
from dss_keras.teacher.backends import Backend, Generation
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
from dss_keras.teacher.testing_server import FakeOpenAIServer

from teacher_helpers import nli_complete, write_nli_inputs

ROOT = Path(__file__).resolve().parents[1]


class Scripted(Backend):
    """Answers like `nli_complete`, in batches of 3."""

    model = "scripted"
    batch_size = 3

    def __init__(self):
        self.prompts = []

    def generate(self, prompts, n=1, temperature=0.0, max_tokens=256, stop=None):
        self.prompts += [p.text for p in prompts]
        return [Generation(tuple(nli_complete(p.text, i) for i in range(n)), ("stop",) * n,
                           {"prompt_tokens": 10, "completion_tokens": 5}) for p in prompts]


def test_rerun_skips_what_is_written(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 10)
    output = tmp_path / "out.jsonl"
    first = extract(inputs, output, "esnli", Scripted(), limit=4)
    assert (first.written, first.skipped) == (4, 0)
    backend = Scripted()
    second = extract(inputs, output, "esnli", backend)
    assert (second.written, second.skipped) == (6, 4) and len(backend.prompts) == 6
    ids = [r.id for r in read_records(output)]
    assert ids == [f"x{i}" for i in range(10)]
    assert second.num_gold == 10 and 0.0 < second.accuracy < 1.0
    third = extract(inputs, output, "esnli", Scripted())
    assert (third.written, third.skipped, third.requests) == (0, 10, 0)


def test_torn_last_line_is_redone(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 5)
    reference, output = tmp_path / "reference.jsonl", tmp_path / "out.jsonl"
    extract(inputs, reference, "esnli", Scripted())
    text = reference.read_text()
    lines = text.splitlines(keepends=True)
    output.write_text("".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    report = extract(inputs, output, "esnli", Scripted())
    assert (report.written, report.skipped) == (3, 2)
    assert output.read_text() == text


def test_a_different_model_or_prompt_is_refused(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    extract(inputs, output, "esnli", Scripted(), limit=2)
    other = Scripted()
    other.model = "another-model"
    with pytest.raises(ValueError, match="written with model 'scripted'.*'another-model'"):
        extract(inputs, output, "esnli", other)
    with pytest.raises(ValueError, match=r"prompt_version 'esnli-[0-9a-f]{12}'.*'esnli-v2'"):
        extract(inputs, output, "esnli", Scripted(), prompt_version="esnli-v2")
    assert len(output.read_text().splitlines()) == 2


def test_a_broken_line_inside_the_file_is_an_error(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    output.write_text("{broken\n{}\n")
    with pytest.raises(RecordError, match=r"out.jsonl:1: invalid JSON"):
        extract(inputs, output, "esnli", Scripted())


def test_filters_write_the_training_file(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 30)
    output = tmp_path / "out.jsonl"
    parsed = extract(inputs, output, "esnli", Scripted(), filter="parsed")
    gold = extract(inputs, output, "esnli", Scripted(), filter="gold")
    records = read_records(output)
    assert parsed.filtered_path == str(tmp_path / "out.parsed.jsonl")
    assert parsed.num_kept == sum(r.llm_label is not None for r in records) < 30
    assert gold.num_kept == sum(r.llm_label == r.label for r in records) < parsed.num_kept
    assert all(r.llm_label == r.label for r in read_records(gold.filtered_path))
    assert "parse failures (written, no rationale): label outside the label set" in str(gold)


@pytest.mark.slow
def test_sigkill_then_rerun_writes_every_id_once(tmp_path):
    """Kill an extraction subprocess at a random point; the rerun completes the same file."""
    count = 80
    inputs = write_nli_inputs(tmp_path / "in.jsonl", count)
    killed, reference = tmp_path / "killed.jsonl", tmp_path / "reference.jsonl"
    kill_after = random.Random().randint(1, count - 10)
    with FakeOpenAIServer(complete=nli_complete, latency=0.02) as server:
        command = [sys.executable, "-m", "dss_keras.cli", "extract", "--task", "esnli",
                   "--input", inputs, "--output", str(killed), "--model", "fake-model",
                   "--base-url", server.base_url, "--concurrency", "4", "--no-progress"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and process.poll() is None:
            if killed.exists() and killed.read_bytes().count(b"\n") >= kill_after:
                break
            time.sleep(0.002)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        written = killed.read_bytes().count(b"\n")
        assert 0 < written < count, f"killed after {written} lines"

        def backend():
            return OpenAIBackend("fake-model", base_url=server.base_url, concurrency=4)

        rerun = extract(inputs, killed, "esnli", backend())
        extract(inputs, reference, "esnli", backend())
    assert rerun.skipped == written and rerun.written == count - written
    ids = [r.id for r in read_records(killed)]
    assert sorted(ids) == sorted(f"x{i}" for i in range(count)) and len(set(ids)) == count
    assert killed.read_bytes() == reference.read_bytes()


@pytest.mark.slow
def test_cli_extract_then_train_steps(tmp_path, tiny_model, capsys):
    """Unlabelled inputs -> `dss-keras extract` -> read_records -> make_dataset -> fit."""
    from dss_keras.cli import main
    from dss_keras.data.pipeline import make_dataset

    inputs = write_nli_inputs(tmp_path / "in.jsonl", 12, labelled=False)
    output = tmp_path / "teacher.jsonl"
    with FakeOpenAIServer(complete=nli_complete) as server:
        code = main(["extract", "--task", "esnli", "--input", inputs, "--output", str(output),
                     "--model", "fake-model", "--base-url", server.base_url,
                     "--route", "completions", "--no-progress", "--filter", "parsed"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "written 12" in printed and "no gold labels" in printed
    records = read_records(output)
    assert all(r.label is None and r.teacher["model"] == "fake-model" for r in records)
    dataset, report = make_dataset(read_records(tmp_path / "teacher.parsed.jsonl"),
                                   tiny_model.preprocessor, label_source="llm", batch_size=4)
    assert report.num_examples == report.num_records > 0
    _, gt_report = make_dataset(records[:1] + [records[0].__class__("g", "a </s> b", "neutral")],
                                tiny_model.preprocessor, label_source="gt")
    assert gt_report.missing_label == 1
    tiny_model.compile(optimizer="adam")
    history = tiny_model.fit(dataset.take(2), epochs=1, verbose=0)
    assert all(v[0] == v[0] for v in history.history.values())  # finite, no NaN
