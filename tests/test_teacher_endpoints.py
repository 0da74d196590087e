"""Endpoints as they behave today: reasoning models, <think> blocks, n = 1, refusals, slow replies."""

import json
import time

import pytest

from dss_keras.teacher import extract
from dss_keras.teacher.backends import Generation, TeacherError
from dss_keras.teacher.backends.adaptation import RequestParameters
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend, read_choice
from dss_keras.teacher.testing_server import REASONING_TOKENS, FakeOpenAIServer, Reply

from teacher_helpers import nli_complete, question, write_nli_inputs


def _backend(server, **options):
    options = {"concurrency": 4, "timeout": 5.0, "max_retries": 2, "backoff": 0.05, **options}
    return OpenAIBackend("fake-model", base_url=server.base_url, **options)


def _lines(path):
    return [json.loads(line) for line in open(path)]


def test_reasoning_model_is_adapted_to_with_one_request_per_parameter(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 20)
    with FakeOpenAIServer(complete=nli_complete, endpoint="reasoning") as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli",
                         _backend(server, concurrency=8))
    assert report.written == 20 and not report.request_failures
    # max_tokens, stop and temperature: each refused once, by the first request alone.
    assert server.refusals == 3 and server.num_requests == 20 + 3
    assert report.requests == server.num_requests
    assert [a["change"] for a in report.adaptations] == [
        "max_tokens renamed max_completion_tokens", "stop left out", "temperature left out"]
    assert "Use 'max_completion_tokens' instead" in report.adaptations[0]["message"]
    assert report.parameters == {"token_parameter": "max_completion_tokens",
                                 "omitted": ["stop", "temperature"], "reasoning": True}
    assert report.reasoning_tokens == 20 * REASONING_TOKENS
    for line in _lines(tmp_path / "out.jsonl"):
        assert line["teacher"]["request"] == {"n": 1, "max_completion_tokens": 4096}
        # Stop strings are applied to the text: the next example never reaches the rationale.
        assert "Premise: another" not in (line["rationale"] or "")
    assert "adapted to the endpoint: max_tokens renamed" in str(report)


def test_reasoning_model_said_up_front_sends_no_refused_request(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 6)
    with FakeOpenAIServer(complete=nli_complete, endpoint="reasoning") as server:
        backend = _backend(server, parameters=RequestParameters.for_reasoning_model())
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", backend)
    assert server.refusals == 0 and report.written == 6 and not report.adaptations


def test_reasoning_budget_too_small_is_its_own_cause(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 4)
    with FakeOpenAIServer(complete=nli_complete, endpoint="reasoning") as server:
        backend = _backend(server, parameters=RequestParameters.for_reasoning_model())
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", backend,
                         max_tokens=REASONING_TOKENS)  # all of it spent reasoning
    assert report.parse_failures == {"stopped by length with no answer": 4}
    assert all(line["teacher"]["status"] == "parse_error" for line in _lines(
        tmp_path / "out.jsonl"))


THOUGHT = "Maybe it contradicts. So the answer is contradiction."


def think_complete(prompt, index):
    """A <think> model: its thinking holds a wrong answer line, its answer the right one."""
    return f"<think>{THOUGHT}</think>\n{nli_complete(prompt, index)}"


@pytest.mark.parametrize("keep", [False, True])
def test_think_blocks_never_reach_the_rationale_or_the_parser(tmp_path, keep):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 8)
    with FakeOpenAIServer(complete=think_complete) as server:
        report = extract(inputs, tmp_path / "out.jsonl", "anli1", _backend(server),
                         keep_reasoning=keep, max_tokens=512)
    lines = _lines(tmp_path / "out.jsonl")
    assert report.written == 8
    for line in lines:
        text = json.dumps({k: line[k] for k in ("rationale", "llm_label")})
        assert "think" not in text and "Maybe it contradicts" not in text
        assert "<think>" not in line["teacher"]["completions"][0]
        assert ("reasoning" in line["teacher"]) == keep
        if keep:
            assert line["teacher"]["reasoning"] == [THOUGHT]


def test_a_first_reply_that_thought_past_the_default_budget_is_asked_again(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 5)
    first = "premise 0"

    def script(prompt, attempt):
        if question(prompt) == first and attempt == 0:
            return Reply(texts=("<think>Let me weigh every word of the premise",),
                         finish_reason="length")
        return None

    with FakeOpenAIServer(complete=think_complete, script=script) as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server))
    lines = _lines(tmp_path / "out.jsonl")
    assert report.written == 5 and not report.parse_failures.get(
        "stopped by length with no answer")
    assert lines[0]["teacher"]["attempts"] == 2 and server.num_requests == 6
    assert all(line["teacher"]["request"]["max_tokens"] == 4096 for line in lines)
    assert report.parameters["reasoning"] is True


def test_reasoning_field_is_kept_apart_and_its_tokens_counted():
    from openai.types.chat import ChatCompletion

    reply = ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Because. So the answer is yes.",
            "reasoning_content": "So the answer is no?"}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 30, "total_tokens": 35,
                  "completion_tokens_details": {"reasoning_tokens": 20}}})
    assert read_choice(reply.choices[0], "chat") == ("Because. So the answer is yes.",
                                                     "So the answer is no?")


def test_an_endpoint_that_takes_one_sample_per_request(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 5)
    with FakeOpenAIServer(complete=nli_complete, endpoint="single_sample") as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server), samples=3)
    assert report.written == 5 and server.refusals == 1
    assert server.num_requests == 1 + 5 * 3
    assert report.adaptations[0]["change"] == "one request per sample (n > 1 refused)"
    for line in _lines(tmp_path / "out.jsonl"):
        assert len(line["teacher"]["completions"]) == 3
        assert line["teacher"]["request"]["n"] == 1 and line["teacher"]["attempts"] >= 3


def test_the_same_refusal_five_times_in_a_row_stops_the_run(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 200)
    refused = Reply(400, error={"message": "This model does not take few-shot prompts.",
                                "type": "invalid_request_error"})
    with FakeOpenAIServer(script=lambda prompt, attempt: refused) as server:
        with pytest.raises(TeacherError, match=r"refused 5 requests in a row: HTTP 400: "
                                               r"This model does not take few-shot"):
            extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server))
    # The first request alone, then at most what was in flight or queued when the fifth
    # refusal was read: two rounds of the concurrency.
    assert server.num_requests <= 5 + 2 * 4
    saved = json.load(open(tmp_path / "out.report.json"))
    assert saved["totals"]["requests"] >= 5


def test_refusals_between_answers_do_not_stop_the_run(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 20)

    def script(prompt, attempt):
        number = int(question(prompt).split()[1])
        return Reply(400, error={"message": "too long"}) if number % 2 else None

    with FakeOpenAIServer(complete=nli_complete, script=script) as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server,
                                                                          concurrency=1))
    assert report.written == 10 and report.request_failures == {"HTTP 400: too long": 10}


def test_a_request_has_one_deadline_for_connecting_waiting_and_reading(tmp_path):
    """Issue 36 case 2: a server that drips its reply cannot hold a request past its deadline."""
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 12)

    def script(prompt, attempt):
        return Reply(drip=1.0) if question(prompt) == "premise 3" else None

    with FakeOpenAIServer(complete=nli_complete, script=script) as server:
        start = time.monotonic()
        report = extract(inputs, tmp_path / "out.jsonl", "esnli",
                         _backend(server, timeout=1.5, max_retries=1))
        elapsed = time.monotonic() - start
    assert report.request_failures == {"deadline of 1.5 s passed": 1}
    assert report.written == 11 and report.unanswered_requests == 2
    assert elapsed < 2 * 1.5 + 3  # two attempts, the backoff and the rest; not 100+ s of drip


def test_a_5_mb_completion_past_its_budget_is_not_trusted_nor_stored_twice(tmp_path):
    """Issue 36 case 6: a server that ignores max_tokens."""
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 3)
    huge = "word " * 1_000_000 + "\nAnswer: entailment"

    def script(prompt, attempt):
        return Reply(texts=(huge,)) if question(prompt) == "premise 1" else None

    with FakeOpenAIServer(complete=nli_complete, script=script) as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server),
                         max_tokens=256)
    line = next(x for x in _lines(tmp_path / "out.jsonl") if x["id"] == "x1")
    assert line["teacher"]["status"] == "over_budget" and line["rationale"] is None
    assert line["teacher"]["completion_chars"] == [len(huge)]
    assert len(line["teacher"]["completions"][0]) <= 256 * 16
    assert (tmp_path / "out.jsonl").stat().st_size < 100_000
    assert report.parse_failures == {"completion over the token budget": 1, **{
        k: v for k, v in report.parse_failures.items() if k != "completion over the token budget"}}


def test_over_budget_without_a_reported_usage_is_judged_by_length():
    from dss_keras.teacher.answers import over_budget

    assert over_budget(Generation(("x" * 5000,)), 256, ["x" * 5000]) is True
    assert over_budget(Generation(("x" * 500,)), 256, ["x" * 500]) is False
    assert over_budget(Generation(("x",), usage={"completion_tokens": 300}), 256, ["x"]) is True
