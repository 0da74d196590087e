"""Teacher extraction throughput against a loopback OpenAI-compatible server.

    python benchmarks/teacher_throughput.py --latency 0.3

The server (`dss_keras.teacher.testing_server`) runs in its own process, as a
remote one would, and waits `--latency` seconds before every reply. For each concurrency, `extract`
labels `--per-worker` inputs per concurrent request (e-SNLI template, chat
route, the whole path: prompt rendering, requests, parsing, writing), and the
baseline is a plain sequential loop of `openai` client calls. The client's own
overhead per request is the CPU time of this process per input (prompt,
request, parse, write), with `--latency 0`; the wall time per input at
concurrency 1 (client, server and loopback together) is printed beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import tempfile
import time

import openai

from dss_keras.teacher import extract
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
from dss_keras.teacher.testing_server import FakeOpenAIServer


def complete(prompt: str, index: int) -> str:
    return "The hypothesis restates the premise.\nAnswer: entailment"


def _serve(latency: float, connection) -> None:
    server = FakeOpenAIServer(complete=complete, latency=latency).start()
    connection.send(server.base_url)
    connection.recv()  # until told to stop
    server.stop()


@contextlib.contextmanager
def server_process(latency: float):
    """A `FakeOpenAIServer` in a child process; yields an object with `base_url`."""
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(target=_serve, args=(latency, child))
    process.start()
    try:
        yield argparse.Namespace(base_url=parent.recv())
    finally:
        parent.send("stop")
        process.join(timeout=10)
        if process.is_alive():
            process.kill()


def write_inputs(path: str, count: int) -> str:
    with open(path, "w") as f:
        for i in range(count):
            f.write(json.dumps({"id": str(i), "input": f"A man walks {i}. </s> A man moves.",
                                "label": "entailment"}) + "\n")
    return path


def extraction_rate(server, folder, concurrency, count) -> tuple[float, float, float]:
    """(inputs per second, seconds per input, CPU seconds per input) of one `extract` run."""
    inputs = write_inputs(os.path.join(folder, f"in-{concurrency}-{count}.jsonl"), count)
    output = os.path.join(folder, f"out-{concurrency}-{count}-{time.time()}.jsonl")
    backend = OpenAIBackend("bench", base_url=server.base_url, concurrency=concurrency)
    start, cpu = time.perf_counter(), time.process_time()
    report = extract(inputs, output, "esnli", backend)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    assert report.written == count and report.accuracy == 1.0, report
    return count / wall, wall / count, cpu / count


def sequential_rate(server, count) -> tuple[float, float, float]:
    """A plain loop of `openai` calls with the same prompts."""
    from dss_keras.teacher.tasks import get_template

    template = get_template("esnli")
    client = openai.OpenAI(api_key="none", base_url=server.base_url, max_retries=0)
    start, cpu = time.perf_counter(), time.process_time()
    for i in range(count):
        prompt = template.prompt(f"A man walks {i}. </s> A man moves.")
        reply = client.chat.completions.create(model="bench", messages=list(prompt.messages),
                                               max_tokens=256, temperature=0.0)
        template.parse(reply.choices[0].message.content)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    client.close()
    return count / wall, wall / count, cpu / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--per-worker", type=int, default=10)
    parser.add_argument("--sequential", type=int, default=20)
    parser.add_argument("--overhead-requests", type=int, default=200)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        with server_process(args.latency) as server:
            rate, _, _ = sequential_rate(server, args.sequential)
            results["sequential openai loop"] = rate
            print(f"sequential openai loop: {rate:8.2f} inputs/s")
            for concurrency in args.concurrency:
                count = max(args.per_worker * concurrency, 20)
                rate, _, _ = extraction_rate(server, folder, concurrency, count)
                results[f"extract, concurrency {concurrency}"] = rate
                print(f"extract, concurrency {concurrency:3d}: {rate:8.2f} inputs/s "
                      f"({count} inputs, {rate / results['sequential openai loop']:.1f}x "
                      "the sequential loop)")
        with server_process(0.0) as server:
            _, seconds, cpu = extraction_rate(server, folder, 1, args.overhead_requests)
            _, plain, plain_cpu = sequential_rate(server, args.overhead_requests)
            print(f"client overhead per request (CPU of this process): extract "
                  f"{cpu * 1e3:.2f} ms, plain openai loop {plain_cpu * 1e3:.2f} ms (target: "
                  "under 5 ms)")
            print(f"wall per request at zero latency, concurrency 1 (client, server and "
                  f"loopback): extract {seconds * 1e3:.2f} ms, plain openai loop "
                  f"{plain * 1e3:.2f} ms")
    if 16 in args.concurrency:
        ratio = results["extract, concurrency 16"] / results["sequential openai loop"]
        print(f"concurrency 16 / sequential: {ratio:.1f}x (target: at least 10x)")


if __name__ == "__main__":
    main()
