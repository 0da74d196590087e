"""The batch route: OpenAI's Batch API on the loopback server, and `vllm run-batch` files."""

import json

import pytest

from dss_keras.data.records import read_records
from dss_keras.teacher import extract
from dss_keras.teacher import batch as batch_module
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
from dss_keras.teacher.batch import BatchRoute, state_path
from dss_keras.teacher.testing_server import FakeOpenAIServer, Reply

from teacher_helpers import nli_complete, question, write_nli_inputs


def _backend(server, **options):
    return OpenAIBackend("fake-model", base_url=server.base_url, **options)


def _route(**options):
    return BatchRoute(poll_interval=0.01, **options)


def test_batches_split_at_the_limit_and_an_expired_batch_keeps_what_it_did(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 31)
    output = tmp_path / "out.jsonl"
    # The first batch expires after 4 of its 10 requests: those are kept, 6 are sent again.
    with FakeOpenAIServer(complete=nli_complete,
                          expire_batch=lambda number: 4 if number == 1 else None) as server:
        report = extract(inputs, output, "esnli", _backend(server),
                         batch=_route(max_requests=10))
    ids = [r.id for r in read_records(output)]
    assert ids == [f"x{i}" for i in range(31)]
    # The first input as a single request, then 30 in batches of 10, then the 6 expired.
    assert [b["request_counts"]["total"] for b in server.batches.batches.values()] == [
        10, 10, 10, 6]
    assert server.batches.batches["batch_1"]["status"] == "expired"
    # Every input was answered exactly once: nothing paid for twice.
    assert set(server.attempts.values()) == {1} and len(server.attempts) == 31
    assert report.written == 31 and not report.request_failures
    state = json.load(open(state_path(str(output))))
    assert [e["status"] for e in state["batches"]] == ["expired", "completed", "completed",
                                                       "completed"]


def test_a_rerun_resumes_polling_instead_of_paying_twice(tmp_path, monkeypatch):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 12)
    output = tmp_path / "out.jsonl"

    class Interrupted:  # Ctrl-C while the batch is polled
        @staticmethod
        def sleep(seconds):
            raise KeyboardInterrupt

    with FakeOpenAIServer(complete=nli_complete) as server:
        monkeypatch.setattr(batch_module, "time", Interrupted)
        with pytest.raises(KeyboardInterrupt):
            extract(inputs, output, "esnli", _backend(server), batch=_route())
        monkeypatch.undo()
        state = json.load(open(state_path(str(output))))
        assert [e["id"] for e in state["batches"]] == ["batch_1"]
        assert len(read_records(output)) == 1  # the single first request
        report = extract(inputs, output, "esnli", _backend(server), batch=_route())
    assert len(server.batches.batches) == 1  # the same batch, collected
    assert report.written == 11 and set(server.attempts.values()) == {1}
    assert [r.id for r in read_records(output)] == [f"x{i}" for i in range(12)]


def test_an_upload_whose_batch_id_was_not_noted_is_found_again(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 5)
    output = tmp_path / "out.jsonl"
    with FakeOpenAIServer(complete=nli_complete) as server:
        extract(inputs, output, "esnli", _backend(server), limit=1)
        backend = _backend(server)
        client = backend.client(sync=True)
        lines = [json.dumps({"custom_id": f"x{i}", "method": "POST",
                             "url": "/v1/chat/completions", "body": {
                                 "model": "fake-model", "n": 1, "max_tokens": 256,
                                 "messages": [{"role": "user",
                                               "content": f"Premise: premise {i}"}]}})
                 for i in range(1, 5)]
        uploaded = client.files.create(file=("r.jsonl", ("\n".join(lines) + "\n").encode()),
                                       purpose="batch")
        batch = client.batches.create(input_file_id=uploaded.id,
                                      endpoint="/v1/chat/completions", completion_window="24h")
        # A crash right after the batch was created: only the upload was noted.
        with open(state_path(str(output)), "w") as f:
            json.dump({"batches": [{"input_file_id": uploaded.id, "requests": 4,
                                    "collected": False}]}, f)
        report = extract(inputs, output, "esnli", backend, batch=_route())
    assert list(server.batches.batches) == [batch.id]
    assert report.written == 4 and len(read_records(output)) == 5


def test_refused_batch_requests_are_counted_not_written(tmp_path):
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 6)

    def script(prompt, attempt):
        return Reply(400, error={"message": "prompt too long"}) if question(
            prompt) == "premise 3" else None

    with FakeOpenAIServer(complete=nli_complete, script=script) as server:
        report = extract(inputs, tmp_path / "out.jsonl", "esnli", _backend(server),
                         batch=_route())
    assert report.written == 5 and report.request_failures == {"HTTP 400: prompt too long": 1}


def test_vllm_run_batch_files(tmp_path):
    """The request file `vllm run-batch -i` reads; its `-o` results go through the same writer."""
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 7)
    output, requests = tmp_path / "out.jsonl", tmp_path / "requests.jsonl"
    backend = OpenAIBackend("meta-llama/Llama-3.1-8B-Instruct")  # no key needed for files
    written = extract(inputs, output, "esnli", backend,
                      batch=BatchRoute(write_requests=str(requests)))
    assert written.written == 0 and "7 requests written" in written.stopped
    lines = [json.loads(line) for line in open(requests)]
    assert [line["custom_id"] for line in lines] == [f"x{i}" for i in range(7)]
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    assert lines[0]["body"]["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert lines[0]["body"]["messages"][-1]["content"].startswith("Premise: premise 0")
    # What `vllm run-batch -o` writes: one result line per request, in any order.
    with FakeOpenAIServer(complete=nli_complete) as server, \
            open(tmp_path / "results.jsonl", "w") as f:
        for i, line in reversed(list(enumerate(lines[:5]))):
            payload, _ = server.answer("completions", line["body"])
            f.write(json.dumps({"id": f"vllm-{i}", "custom_id": line["custom_id"], "response": {
                "status_code": 200, "request_id": f"r{i}", "body": payload},
                "error": None}) + "\n")
    report = extract(inputs, output, "esnli", backend,
                     batch=BatchRoute(read_results=str(tmp_path / "results.jsonl")))
    assert report.written == 5
    records = read_records(output)
    assert [r.id for r in records] == [f"x{i}" for i in range(5)]
    assert records[0].teacher["request"]["max_tokens"] == 256
    again = extract(inputs, output, "esnli", backend,
                    batch=BatchRoute(read_results=str(tmp_path / "results.jsonl")))
    assert (again.written, again.skipped) == (0, 5)
