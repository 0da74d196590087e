"""The OpenAI-compatible backend and the extraction loop against a loopback server."""

import asyncio
import json
import logging

import pytest
from openai.types.chat import ChatCompletion

from dss_keras.teacher import extract
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend, TeacherError
from dss_keras.teacher.testing_server import FakeOpenAIServer, Reply

from teacher_helpers import nli_complete, question, write_nli_inputs

TAGS = ("ok", "p429", "p500", "p503", "pslow", "pmal", "plen", "pempty", "pout", "ok")


def script(prompt, attempt):
    tag = question(prompt).split(" ")[-1]
    if tag == "p429" and attempt == 0:
        return Reply(429, headers={"Retry-After": "0.3"})
    if tag == "p500":
        return Reply(500)  # always: reported, not written
    if tag == "p503" and attempt < 2:
        return Reply(503)
    if tag == "pslow" and attempt == 0:
        return Reply(delay=2.0)  # past the client's timeout
    if tag == "pmal" and attempt == 0:
        return Reply(body=b'{"choices": [')
    if tag == "plen":
        return Reply(texts=("Because the premise says",), finish_reason="length")
    if tag == "pempty":
        return Reply(texts=())
    if tag == "pout":
        return Reply(texts=("It is unclear.\nAnswer: maybe",))
    return None


def _backend(server, route="chat", **options):
    options = {"concurrency": 4, "timeout": 0.8, "max_retries": 3, "backoff": 0.05, **options}
    return OpenAIBackend("fake-model", base_url=server.base_url, route=route, **options)


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_every_input_ends_written_or_reported(tmp_path, route):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", len(TAGS), tags=TAGS)
    output = str(tmp_path / "out.jsonl")
    with FakeOpenAIServer(complete=nli_complete, script=script) as server:
        report = extract(inputs, output, "esnli", _backend(server, route))
    lines = [json.loads(line) for line in open(output)]
    ids = [line["id"] for line in lines]
    assert len(ids) == len(set(ids)) == report.written
    assert report.request_failures == {"HTTP 500": 1, "empty choices": 1}
    assert report.written + sum(report.request_failures.values()) == len(TAGS)
    assert report.parse_failures["truncated (max tokens reached)"] == 1
    outside = sum("Answer: maybe" in line["teacher"]["completions"][0] for line in lines)
    assert report.parse_failures["label outside the label set"] == outside >= 1
    by_tag = {line["input"].split(" </s>")[0].split(" ")[-1]: line for line in lines}
    assert set(by_tag) == set(TAGS) - {"p500", "pempty"}
    for tag in ("p429", "pslow", "pmal"):
        teacher = by_tag[tag]["teacher"]
        assert teacher["attempts"] == 2 and teacher["completions"][0].startswith("Because of")
    assert by_tag["p503"]["teacher"]["attempts"] == 3
    assert by_tag["pout"]["teacher"]["status"] == "parse_error"
    assert by_tag["pout"]["llm_label"] is None and by_tag["pout"]["rationale"] is None
    # Retries are bounded: 1 + max_retries attempts for the input that always fails.
    assert server.attempts.most_common(1)[0][1] == 4
    assert server.max_in_flight <= 4
    # Retry-After is honoured.
    times = next(t for p, t in server.request_times.items() if question(p).endswith("p429"))
    assert times[1] - times[0] >= 0.3
    assert report.prompt_tokens > 0 and report.completion_tokens > 0
    assert report.requests == server.num_requests


def test_concurrency_is_bounded_and_used(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 40)
    with FakeOpenAIServer(complete=nli_complete, latency=0.05) as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server))
    assert report.written == 40 and server.num_requests == 40
    assert 2 <= server.max_in_flight <= 4


def test_samples_vote_and_store_agreement(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 6)
    with FakeOpenAIServer(complete=nli_complete) as server:
        extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server), samples=3)
    for line in map(json.loads, open(tmp_path / "out.jsonl")):
        teacher = line["teacher"]
        assert len(teacher["completions"]) == 3
        assert teacher["sampling"] == {"samples": 3, "temperature": 0.7, "max_tokens": None}
        assert teacher["request"] == {"n": 3, "max_tokens": 256, "temperature": 0.7,
                                      "stop": ["\nPremise:"]}
        if teacher["status"] == "ok":
            # Three different labels: the first one wins with a third of the votes.
            assert teacher["agreement"] == pytest.approx(1 / 3)
            assert f"Answer: {line['llm_label']}" in teacher["completions"][0]


def test_authentication_failure_stops_the_run(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 20)
    with FakeOpenAIServer(script=lambda prompt, attempt: Reply(401)) as server:
        with pytest.raises(TeacherError, match="HTTP 401"):
            extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server))
    assert server.num_requests <= 20


def test_api_key_comes_from_the_environment_only(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 2)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):  # before any request is sent
        extract(inputs, tmp_path / "keyless.jsonl", "esnli", OpenAIBackend("gpt-x"))
    monkeypatch.setenv("MY_KEY", "sk-secret-value")
    with FakeOpenAIServer(complete=nli_complete) as server:
        backend = _backend(server, api_key_env="MY_KEY")
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", backend)
    assert "sk-secret" not in (tmp_path / "out.jsonl").read_text()
    assert "sk-secret" not in str(report) + repr(vars(backend))


class _InstantClient:
    """An in-process client whose requests finish within one loop turn: the
    moment a cancellation is most easily lost."""

    def __init__(self, late_requests):
        self.closed, self.late_requests = False, late_requests

    async def post(self, path, cast_to, body):
        if self.closed:
            self.late_requests.append(path)
            raise RuntimeError("Cannot send a request, as the client has been closed.")
        await asyncio.sleep(0)
        return _INSTANT_REPLY

    async def close(self):
        self.closed = True


_INSTANT_REPLY = ChatCompletion.model_validate({
    "id": "r", "object": "chat.completion", "created": 0, "model": "m",
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    "choices": [{"index": 0, "finish_reason": "stop",
                 "message": {"role": "assistant", "content": "Answer: yes"}}]})


def test_a_consumer_that_stops_early_stops_every_request(caplog):
    # A consumer that fails (a full disk, Ctrl-C) closes the generator while
    # eight requests are in flight. No request may start after the client has
    # closed, nor anything reach asyncio's error log. Each round is a race;
    # before the fix, a few of 300 rounds lost it.
    late_requests = []

    class Backend(OpenAIBackend):
        def client(self, sync=False):
            return _InstantClient(late_requests)

    prompts = [[{"role": "user", "content": "q"}]] * 100
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        for _ in range(300):
            answers = Backend("m", base_url="http://unused", concurrency=8).iter_generate(prompts)
            assert [next(answers)[1].error for _ in range(4)] == [None] * 4
            answers.close()
    assert late_requests == []
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []
