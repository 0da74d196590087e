"""`dss-keras extract` from the command line: dry run, flags, exit statuses, and the README journey."""

import json
import os
from pathlib import Path

import pytest

from dss_keras import cli
from dss_keras.data.records import read_records
from dss_keras.teacher.backends.adaptation import RequestParameters, request_body
from dss_keras.teacher.tasks import get_template
from dss_keras.teacher.testing_server import FakeOpenAIServer, count_tokens

from teacher_helpers import nli_complete, write_nli_inputs

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
INSTRUCTION = "Classify the sentiment of the review. Explain, then answer."


def run_cli(capsys, *argv):
    try:
        status = cli.main([str(a) for a in argv])
    except SystemExit as exit_info:
        status = exit_info.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_dry_run_prints_the_first_request_and_sends_and_writes_nothing(tmp_path, capsys):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 20)
    before = sorted(os.listdir(tmp_path))
    with FakeOpenAIServer() as server:
        status, out, _ = run_cli(capsys, "extract", "--task", "esnli", "--input", inputs,
                                 "--output", tmp_path / "out.jsonl", "--model", "gpt-x",
                                 "--base-url", server.base_url, "--dry-run",
                                 "--price-input", "0.15", "--price-output", "0.6")
    assert status == 0 and server.num_requests == 0 and sorted(os.listdir(tmp_path)) == before
    template = get_template("esnli")
    body = request_body("gpt-x", "chat", template.prompt("premise 0 </s> hypothesis 0"),
                        RequestParameters(), 1, 0.0, None, template.stop)
    assert json.dumps(body, indent=2, ensure_ascii=False) in out  # exactly as sent
    assert "Inputs: 20 (0 already in the output, 20 to send in 20 requests)" in out
    assert "(estimate: 4 characters a token; give a tokenizer.json to count)" in out
    assert "Estimated cost: $" in out and "at most $" in out


def test_dry_run_counts_with_a_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from dss_keras.teacher.dry_run import dry_run

    vocabulary = {"[UNK]": 0, "premise": 1, "0": 2}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 3)
    report = dry_run(inputs, tmp_path / "out.jsonl", "esnli", model="m", backend_options={
        "route": "completions"}, tokenizer=tmp_path / "tokenizer.json")
    template = get_template("esnli")
    expected = sum(len(tokenizer.encode(template.prompt(f"premise {i} </s> hypothesis {i}").text
                                        ).ids) for i in range(3))
    assert abs(report.prompt_tokens - expected) <= 3  # the shared part counted once
    assert "counted with" in report.tokens_label and "(estimate:" not in str(report)


def test_dry_run_estimate_against_what_a_run_then_uses(tmp_path):
    """The figure BENCHMARKS records: estimate / the loopback server's own count."""
    from dss_keras.teacher import extract
    from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
    from dss_keras.teacher.dry_run import dry_run

    inputs = write_nli_inputs(tmp_path / "in.jsonl", 20)
    estimate = dry_run(inputs, tmp_path / "out.jsonl", "esnli", model="m")
    with FakeOpenAIServer(complete=nli_complete) as server:
        used = extract(inputs, tmp_path / "out.jsonl", "esnli",
                       OpenAIBackend("m", base_url=server.base_url))
    assert 0.5 < estimate.prompt_tokens / used.prompt_tokens < 2.0
    assert count_tokens("So the answer is (b).") == 8


def test_extract_flags_reach_the_run(tmp_path, capsys):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 6)
    output = tmp_path / "out.jsonl"
    demos = tmp_path / "demos.jsonl"
    demos.write_text(json.dumps({"input": "A cat sleeps. </s> An animal rests.",
                                 "rationale": "A cat is an animal.", "label": "entailment"})
                     + "\n")
    with FakeOpenAIServer(complete=nli_complete, endpoint="reasoning") as server:
        common = ["extract", "--task", "esnli", "--input", inputs, "--output", output,
                  "--model", "o-fake", "--base-url", server.base_url, "--no-progress"]
        status, out, err = run_cli(capsys, *common, "--answer-format", "number")
        assert status == 2 or "reads its own answers" in err
        status, out, err = run_cli(capsys, *common, "--reasoning-model", "--demonstrations",
                                   demos, "--instruction", "Decide.", "--max-spend-tokens", "1")
        assert status == 4 and "stopped early: spent" in out, err
        assert server.refusals == 0
        status, out, err = run_cli(capsys, *common, "--reasoning-model", "--demonstrations",
                                   demos, "--instruction", "Decide.", "--keep-reasoning")
        assert status == 0 and "written 5, skipped (already there) 1" in out, err
    records = read_records(output)
    version = records[0].teacher["prompt_version"]
    assert version.startswith("esnli-") and version != get_template("esnli").version
    assert records[0].teacher["request"] == {"n": 1, "max_completion_tokens": 4096}
    assert json.load(open(tmp_path / "out.report.json"))["totals"]["written"] == 6


def test_answer_format_with_a_built_in_task_is_an_error(tmp_path, capsys):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 2)
    status, _, err = run_cli(capsys, "extract", "--task", "esnli", "--input", inputs,
                             "--output", tmp_path / "o.jsonl", "--model", "m", "--base-url",
                             "http://127.0.0.1:9/v1", "--answer-format", "yes,no")
    assert status == 1
    assert "An answer format is for `task=\"custom\"`; esnli reads its own answers" in err


def review_complete(prompt: str, index: int) -> str:
    """A sentiment teacher: mixed for a contrast, negative for a fault, else positive."""
    review = prompt.rsplit("\n\n", 1)[-1].removeprefix("Q: ").split("\nA:")[0].lower()
    if any(word in review for word in (" but ", " yet ", "though")):
        return "It praises one thing and faults another. So the answer is mixed."
    if any(word in review for word in ("broke", "cracked", "flimsy", "leak", "never")):
        return "It only names faults. So the answer is negative."
    return "It only names good points. So the answer is positive."


@pytest.mark.slow
def test_the_readme_journey_through_the_command_line(tmp_path, capsys):
    """extract -> train (--preset tiny, a few steps) -> export -> predict through the SavedModel."""
    inputs = tmp_path / "inputs.jsonl"
    with open(inputs, "w") as f:
        examples = [json.loads(line)["input"]
                    for line in open(RECIPES / "sentiment_inputs.jsonl")]
        for i in range(24):
            f.write(json.dumps({"id": f"r{i}", "input": f"{examples[i % 6]} ({i})"}) + "\n")
    with FakeOpenAIServer(complete=review_complete) as server:
        status, out, err = run_cli(
            capsys, "extract", "--task", "custom", "--input", inputs,
            "--output", tmp_path / "teacher.jsonl",
            "--demonstrations", RECIPES / "sentiment_demonstrations.jsonl",
            "--answer-format", "positive,negative,mixed", "--instruction", INSTRUCTION,
            "--backend", "openai", "--model", "gpt-4o-mini", "--base-url", server.base_url,
            "--filter", "parsed", "--no-progress")
    assert status == 0 and "written 24" in out, err
    run_dir = tmp_path / "runs" / "mine"
    status, out, err = run_cli(
        capsys, "train", "--train-file", tmp_path / "teacher.parsed.jsonl", "--label-source",
        "llm", "--validation-fraction", "0", "--run-dir", run_dir, "--preset", "tiny",
        "--steps", "4", "--eval-every", "2", "--batch-size", "4", "--vocabulary-size", "150",
        "--hidden-dim", "16", "--intermediate-dim", "32", "--num-layers", "1",
        "--num-heads", "2", "--max-input-length", "48", "--max-label-length", "4",
        "--max-rationale-length", "12")
    assert status == 0, err
    status, out, err = run_cli(capsys, "export", run_dir, "--export-dir",
                               tmp_path / "saved_models" / "mine")
    assert status == 0, err
    exported = out.strip().split()[-1]
    status, out, err = run_cli(capsys, "predict", "--saved-model", exported,
                               "The strap snapped on the first day.")
    assert status == 0, err
    assert len(out.splitlines()) == 1  # one label, from the served graph


def test_extract_from_an_endpoint_runs_where_tensorflow_cannot_be_imported(tmp_path):
    """The teacher only talks HTTP: `extract` neither needs nor loads TensorFlow or Keras."""
    import subprocess
    import sys

    blocker = tmp_path / "blocker"
    for name in ("tensorflow", "keras"):
        (blocker / name).mkdir(parents=True)
        (blocker / name / "__init__.py").write_text(f"raise ImportError('{name} is blocked')\n")
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 4)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocker), str(ROOT)]),
                   "OPENAI_API_KEY": "test"}
    with FakeOpenAIServer(complete=nli_complete) as server:
        done = subprocess.run(
            [sys.executable, "-m", "dss_keras.cli", "extract", "--task", "esnli", "--input",
             str(inputs), "--output", str(tmp_path / "out.jsonl"), "--model", "gpt-x",
             "--base-url", server.base_url],
            env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(read_records(tmp_path / "out.jsonl")) == 4
