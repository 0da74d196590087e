import json
import os

import pytest

from dss_keras.data.records import RecordError
from dss_keras.data.teacher_outputs import parse_teacher_outputs
from dss_keras.teacher import tasks as prompts
from dss_keras.teacher.prompts import Demonstration
from dss_keras.teacher.tasks import custom_template, get_template

from pathlib import Path

_ROOT = Path(os.environ.get("DSS_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
OFFICIAL = _ROOT / "dss_official" if (_ROOT / "dss_official").is_dir() else _ROOT


@pytest.mark.parametrize("task", prompts.TASKS)
def test_builtin_demonstrations_parse_back_to_their_labels(task):
    template = get_template(task)
    assert 8 <= len(template.demonstrations) <= 12
    assert template.version == f"{task}-{template.digest()}"
    assert template.aliases == (f"{task}-v1",)  # the same prompt as before versions were digests
    template.check()
    labels = [template.parse(template.render_answer(d)).label
              for d in template.demonstrations]
    assert labels == [d.label for d in template.demonstrations]


def test_nli_prompt_shows_premise_and_hypothesis():
    template = get_template("esnli")
    prompt = template.prompt("A dog runs. </s> An animal moves.")
    assert prompt.text.endswith("Premise: A dog runs.\nHypothesis: An animal moves.\nA:")
    assert "\nAnswer: entailment\n\nPremise:" in prompt.text
    assert prompt.messages[0]["role"] == "system"
    assert prompt.messages[-1] == {"role": "user",
                                   "content": "Premise: A dog runs.\nHypothesis: An animal moves."}
    assert len(prompt.messages) == 2 + 2 * len(template.demonstrations)
    with pytest.raises(ValueError, match="premise </s> hypothesis"):
        template.prompt("no separator here")


def test_cqa_answers_name_the_letter_of_the_choice():
    template = get_template("cqa")
    assert "So the answer is (b) refrigerator." in template.prompt("x").text
    reply = "A: Rivers hold water. So the answer is (c) water.\n\nQ: next"
    assert template.parse(reply).label == "water"  # a leading "A:" is dropped


def test_custom_formats_drive_prompt_and_parser(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text(
        json.dumps({"input": "Q1\n(a) red\n(b) blue", "rationale": "Sky.", "label": "b"}) + "\n"
        + json.dumps({"input": "Q2\n(a) red\n(b) blue", "rationale": "Blood.", "label": "a"})
        + "\n")
    letters = custom_template(path, "letters:a-b", "Pick one.")
    assert "Sky. So the answer is (b)." in letters.prompt("Q3").text
    assert letters.parse("Grass. So the answer is (a) red.").label == "a"
    assert "not one of a, b" in letters.parse("Hmm. So the answer is (c).").error

    numbers = custom_template([Demonstration("1+1?", "1 + 1 = 2.", "2")], "number")
    assert numbers.parse("2 + 2 = 4. So the answer is 4.").label == "4"
    assert numbers.parse("So many. So the answer is four.").error is not None
    assert numbers.metric == "equation"

    text = custom_template([Demonstration("Capital of France?", "Known.", "Paris")], "text")
    assert text.parse("Known. So the answer is Rome.\n\nQ: x").label == "Rome"


def test_custom_label_outside_the_set_is_a_failure_not_a_label():
    template = custom_template([Demonstration("x", "r", "yes"), Demonstration("y", "r", "no")],
                               "yes,no")
    parsed = parse_teacher_outputs(["A. So the answer is yes.", "B. So the answer is maybe."],
                                   template.answer_format)
    assert parsed.labels == ("yes", None) and parsed.failed_indices == [1]


def test_custom_version_changes_with_what_is_shown():
    demos = [Demonstration("x", "r", "yes"), Demonstration("y", "r", "no")]
    a = custom_template(demos, "yes,no")
    assert a.version == custom_template(demos, "yes,no").version
    assert a.version != custom_template(demos, "yes,no", "Answer.").version
    assert custom_template(demos, "yes,no", version="mine-1").version == "mine-1"


def test_bad_custom_inputs_are_refused(tmp_path):
    with pytest.raises(ValueError, match="does not parse back"):
        custom_template([Demonstration("x", "r", "maybe")], "yes,no")
    with pytest.raises(ValueError, match="comma-separated label set"):
        custom_template([Demonstration("x", "r", "yes")], "yes")
    path = tmp_path / "demos.jsonl"
    path.write_text('{"input": "x", "rationale": "", "label": "y"}\n')
    with pytest.raises(RecordError, match=r'demos.jsonl:1: field "rationale"'):
        custom_template(path, "text")


@pytest.mark.parametrize("task", ["cqa", "svamp"])
def test_release_completions_parse_with_the_templates(task):
    """The built-in templates ask for the layout of the PaLM completions of the release."""
    from dss_keras.data.official import read_official

    path = OFFICIAL / task / "llm" / "train_CoT_0.json"
    if not path.is_file():
        pytest.skip(f"the release data is not available (set DSS_DATA_DIR): {OFFICIAL}")
    template = get_template(task)
    completions = json.loads(path.read_text())[:200]
    parsed = [template.parse(c) for c in completions]
    assert sum(p.ok for p in parsed) >= 0.9 * len(parsed)
    records = read_official(task, OFFICIAL, "train").records[:20]
    for record in records:
        assert template.prompt(record.input).text.endswith(f"Q: {record.input}\nA:")


def test_a_built_in_task_takes_other_demonstrations_or_instruction_as_a_new_version(tmp_path):
    from dss_keras.teacher.tasks import resolve_template

    builtin = get_template("esnli")
    told = resolve_template("esnli", instruction="Decide.")
    assert told.prompt("a </s> b").text.startswith("Decide.\n\nPremise:")
    assert told.version != builtin.version and told.aliases == ()
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps({"input": "A cat sleeps. </s> An animal rests.",
                                "rationale": "A cat is an animal.", "label": "entailment"}) + "\n")
    shown = resolve_template("esnli", demonstrations=path)
    assert len(shown.demonstrations) == 1 and shown.version not in builtin.versions
    assert shown.version == resolve_template("esnli", demonstrations=path).version
    with pytest.raises(ValueError, match="esnli reads its own answers"):
        resolve_template("esnli", answer_format="yes,no")
    with pytest.raises(ValueError, match="does not parse back"):
        path.write_text(json.dumps({"input": "x </s> y", "rationale": "r", "label": "maybe"})
                        + "\n")
        resolve_template("esnli", demonstrations=path)


def test_a_parsed_cqa_answer_is_checked_against_the_input_choices():
    template = get_template("cqa")
    question = "Where is milk kept?\nAnswer Choices:\n(a) cupboard\n(b) refrigerator"
    assert template.parse("Cold. So the answer is (b).", question).label == "refrigerator"
    assert "disagree" in template.parse("Cold. So the answer is (a) refrigerator.",
                                        question).error
