import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dss_keras.data.teacher_outputs import (
    ANSWER_FORMATS,
    AnswerFormat,
    ParsedOutput,
    get_answer_format,
    parse_teacher_output,
    parse_teacher_outputs,
)


def official_dir() -> Path:
    """The release subset shipped for development (or `$DSS_DATA_DIR`)."""
    root = Path(os.environ.get("DSS_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    return root / "dss_official" if (root / "dss_official").is_dir() else root


def parse(text, name):
    return parse_teacher_output(text, get_answer_format(name))


# --- cqa -------------------------------------------------------------------------


def test_cqa_label_and_rationale():
    text = (
        "The answer must be a place with many trees. Of the above choices, only a "
        "wooded area has trees. So the answer is (c) wooded area.\n\n"
        "Q: Where would you find a fox?\nAnswer Choices:\n(a) den\n(b) zoo\n"
        "(c) forest\n(d) hen house\n(e) field\nA: The answer must be ... "
        "So the answer is (c) forest.\n\nQ:"
    )
    assert parse(text, "cqa") == ParsedOutput(
        "The answer must be a place with many trees. Of the above choices, only a "
        "wooded area has trees.",
        "wooded area",
    )


@pytest.mark.parametrize(
    "answer, label",
    [
        ("(d) math problem.", "math problem"),
        ("(d) math problem", "math problem"),  # completion cut after the label
        ("(D)   math problem .", "math problem"),
        ("(b) st. louis.", "st. louis"),
        ("(a) level 1.", "level 1"),
        ("(e) bird's nest.", "bird's nest"),
        ("(c) café au lait.", "café au lait"),
        ("(b) 東京.", "東京"),
        ("(a) sauce (food).", "sauce (food)"),
    ],
)
def test_cqa_answers(answer, label):
    assert parse(f"Because. So the answer is {answer}\n\nQ: next", "cqa").label == label


@pytest.mark.parametrize(
    "answer",
    [
        "either (c) country club or (d) fitness center.",
        "(a) bus station or (c) train station.",
        "(c) or (d).",
        "one of these four.",
        "(f) nothing.",
        "(d)",
        "(d) .",
        "",
        "(a) sauce (food.",
    ],
)
def test_cqa_answers_that_fail(answer):
    result = parse(f"Because. So the answer is {answer}\n\nQ: next", "cqa")
    assert (result.rationale, result.label) == (None, None)
    assert result.error


def test_cqa_marker_only_in_the_next_question_is_a_failure():
    text = "I am not sure.\n\nQ: Where?\nA: Here. So the answer is (a) here.\n\nQ:"
    assert parse(text, "cqa").error == "no answer marker 'So the answer is'"


def test_stop_marker_must_start_a_word():
    text = "The FAQ: page helps. So the answer is (a) website.\n\nQ: next"
    assert parse(text, "cqa").label == "website"
    text = "Because. So the answer is (a) website. Q: next. So the answer is (b) book."
    assert parse(text, "cqa").label == "website"


# --- svamp -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer, label",
    [
        ("(84 / 2).", "(84 / 2)"),
        ("(84 / 2)", "(84 / 2)"),
        ("((170 - 78) + 31).", "((170 - 78) + 31)"),
        ("(5 * 3) / 2.", "(5 * 3) / 2"),
        ("(12 - (-3)).", "(12 - (-3))"),
        ("(42).", "(42)"),
        ("(2.5 * 4).", "(2.5 * 4)"),
        ("(some - 5).", "(some - 5)"),  # parses; has no value (metrics' job)
    ],
)
def test_svamp_answers(answer, label):
    text = f"Luke scored 84 points. 84 / 2 = 42. The answer is {answer}\n\nQ: There are"
    assert parse(text, "svamp") == ParsedOutput("Luke scored 84 points. 84 / 2 = 42.", label)


@pytest.mark.parametrize(
    "answer, error",
    [
        ("((491 - 21", "unbalanced parentheses"),  # cut inside the answer
        ("((415 - 309) - (41", "unbalanced parentheses"),
        ("42.", "does not match"),
        ("", "does not match"),
    ],
)
def test_svamp_answers_that_fail(answer, error):
    result = parse(f"Some steps. The answer is {answer}", "svamp")
    assert result.label is None and result.rationale is None
    assert error in result.error


def test_svamp_without_marker_is_a_failure():
    text = "So 63 more students suggested mashed potatoes. So 63 more students sugg"
    assert parse(text, "svamp").error == "no answer marker 'The answer is'"


# --- esnli and anli1 -------------------------------------------------------------


@pytest.mark.parametrize(
    "text, label",
    [
        ("A dog is an animal.\nAnswer: entailment\n\nPremise: A cat", "entailment"),
        ("A dog is an animal.\nAnswer: neutral\n\nPrem", "neutral"),  # cut mid-word
        ("A dog is an animal.\nAnswer: Contradiction.\n\nPremise:", "contradiction"),
        ("A dog is an animal.\nAnswer: neutral", "neutral"),
    ],
)
def test_esnli(text, label):
    assert parse(text, "esnli") == ParsedOutput("A dog is an animal.", label)


@pytest.mark.parametrize(
    "text",
    [
        "A dog is an animal.\nAnswer: neut",  # cut inside the label
        "A dog is an animal.\nAnswer: maybe\n\nPremise:",
        "A dog is an animal.\nAnswer:",
        "A dog is an animal. Premise: Answer: entailment",
        "\nAnswer: entailment",
    ],
)
def test_esnli_failures(text):
    assert parse(text, "esnli").error


@pytest.mark.parametrize(
    "text, label",
    [
        ("It says 1617. So the answer is entailment.\n\nPremise: The 2016", "entailment"),
        ("It says 1617. So the answer is Neutral.\n\nPre", "neutral"),
        ("It says 1617. So the answer is contradiction", "contradiction"),
    ],
)
def test_anli1(text, label):
    assert parse(text, "anli1") == ParsedOutput("It says 1617.", label)


def test_anli1_two_markers_is_a_failure():
    text = "A. So the answer is entailment. B. So the answer is neutral.\n\nPremise:"
    assert parse(text, "anli1").error == "2 times the answer marker 'So the answer is'"


# --- any format --------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(ANSWER_FORMATS))
@pytest.mark.parametrize("output", ["", "   \n\n", "Q: next", "Premise: next", None, 42, ["x"]])
def test_empty_and_non_text_outputs_fail(name, output):
    result = parse(output, name)
    assert (result.rationale, result.label) == (None, None) and result.error


def test_empty_rationale_is_a_failure():
    assert parse("So the answer is (a) den.", "cqa").error == "empty rationale"


def test_failures_keep_alignment():
    outputs = [
        "R0. So the answer is (a) den.\n\nQ:",
        "",
        "R2. So the answer is either (a) den or (b) zoo.",
        None,
        "R4. So the answer is (b) zoo.",
    ]
    parsed = parse_teacher_outputs(outputs, "cqa")
    assert len(parsed) == 5
    assert parsed.pairs == [("R0.", "den"), (None, None), (None, None), (None, None), ("R4.", "zoo")]
    assert parsed.num_failed == 3 and parsed.failed_indices == [1, 2, 3]
    assert parsed.errors[1] == "empty output"
    assert parsed.errors[3] == "expected a string, received NoneType"


def test_answer_format_checks():
    with pytest.raises(ValueError, match="group named `label`"):
        AnswerFormat(stop="Q:", marker="A:", answer=r".+")
    with pytest.raises(ValueError, match="`stop` must not be empty"):
        AnswerFormat(stop="", marker="A:", answer=r"(?P<label>.+)")
    with pytest.raises(ValueError, match="name='gsm8k'"):
        get_answer_format("gsm8k")


def test_a_custom_format():
    fmt = AnswerFormat(stop="Question:", marker="Therefore:", answer=r"(?P<label>\w+)\.?",
                       labels=("yes", "no"))
    assert parse_teacher_output("Birds fly. Therefore: YES.\nQuestion: x", fmt).label == "yes"


HOSTILE_TEXT = st.lists(
    st.one_of(
        st.text(max_size=8),
        st.sampled_from(["Q:", "Premise:", "So the answer is", "The answer is", "Answer:",
                         "(a)", "(", ")", ".", "\n", " ", "entailment", "42", "é"]),
    ),
    max_size=25,
).map("".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(HOSTILE_TEXT, max_size=5), st.sampled_from(sorted(ANSWER_FORMATS)))
def test_parser_never_raises_and_keeps_alignment(outputs, name):
    parsed = parse_teacher_outputs(outputs, name)
    assert len(parsed) == len(outputs)
    for i, (rationale, label) in enumerate(parsed.pairs):
        assert (rationale is None) == (label is None) == (i in parsed.errors)
        if label is not None:
            assert rationale.strip() == rationale and rationale and label.strip() == label


# --- the real teacher outputs ------------------------------------------------------


def _real_outputs(name, split):
    folder = official_dir() / name / "llm"
    if not folder.is_dir():
        pytest.skip(f"the release data is not available (set DSS_DATA_DIR): {folder}")
    outputs, k = [], 0
    while (folder / f"{split}_CoT_{k}.json").is_file():
        outputs += json.loads((folder / f"{split}_CoT_{k}.json").read_text(encoding="utf-8"))
        k += 1
    return outputs


@pytest.mark.parametrize(
    "name, split, total, failed",
    [("cqa", "train", 9741, 287), ("cqa", "test", 1221, 25),
     ("svamp", "train", 800, 14), ("svamp", "test", 200, 2)],
)
def test_real_teacher_outputs(name, split, total, failed):
    parsed = parse_teacher_outputs(_real_outputs(name, split), name)
    assert (len(parsed), parsed.num_failed) == (total, failed)
    labels = [label for label in parsed.labels if label is not None]
    if name == "svamp":
        assert all(label.startswith("(") for label in labels)
    else:
        assert not any(label.endswith(".") or "(" + "a)" in label for label in labels)


# --- chat models: case, markdown, letters --------------------------------------------------

MILK = {"a": "cupboard", "b": "refrigerator", "c": "pantry"}


@pytest.mark.parametrize(
    "text",
    [
        "Milk must stay cold. so the answer is (b) refrigerator.",
        "Milk must stay cold. So The Answer Is (b) refrigerator.",
        "Milk must stay cold. So the answer is **(b) refrigerator**",
        "Milk must stay cold. **So the answer is** (b) refrigerator.",
        "Milk must stay cold. **So the answer is (b) refrigerator.**",
        "Milk must stay cold. So the answer is: *(b) refrigerator*.",
        "Milk must stay cold.\nSo the  answer is `(B) Refrigerator`",
    ],
)
def test_markers_in_any_case_and_markdown(text):
    parsed = parse_teacher_output(text, get_answer_format("cqa"), MILK)
    assert (parsed.rationale, parsed.label) == ("Milk must stay cold.", "refrigerator")


@pytest.mark.parametrize("answer", ["(b).", "(b)", "b.", "B", "refrigerator."])
def test_a_letter_alone_or_the_text_alone_names_the_choice(answer):
    parsed = parse_teacher_output(f"Milk must stay cold. So the answer is {answer}",
                                  get_answer_format("cqa"), MILK)
    assert parsed.label == "refrigerator"


def test_a_letter_and_a_text_that_disagree_are_a_failure_with_that_cause():
    from dss_keras.teacher.answers import failure_cause

    parsed = parse_teacher_output("Milk must stay cold. So the answer is (a) refrigerator.",
                                  get_answer_format("cqa"), MILK)
    assert parsed.label is None
    assert parsed.error == ("letter and text disagree: (a) is 'cupboard', the answer says "
                            "'refrigerator'")
    assert failure_cause(parsed.error) == "letter and choice text disagree"
    missing = parse_teacher_output("Cold. So the answer is (e).", get_answer_format("cqa"), MILK)
    assert missing.error == "letter (e) is not one of the choices a, b, c"


def test_without_the_choices_a_letter_alone_still_fails():
    assert parse("Milk must stay cold. So the answer is (b).", "cqa").label is None


def test_svamp_takes_a_so_before_its_marker_and_the_rationale_keeps_none_of_it():
    parsed = parse("84 / 2 = 42. So the answer is (84 / 2).", "svamp")
    assert parsed == ParsedOutput("84 / 2 = 42.", "(84 / 2)")
