"""The dry run's token estimate against the tokens a run then uses, on the loopback server.

    python benchmarks/teacher_dry_run.py --data-dir path/to/datasets --count 500

For each task, `dss-keras extract --dry-run` estimates the prompt and
completion tokens of the first `--count` training inputs of the authors'
release (`<data-dir>/<task>/`); then `extract` labels the same inputs
against the scripted loopback server (`dss_keras.teacher.testing_server`),
which answers each input with the release's own PaLM rationale and label for it and
reports the usage by its own count (words and punctuation marks, 4 more
a chat message). Without `--data-dir`, synthetic e-SNLI inputs are used and
the server answers with the demonstrations' answers. The figures compare
two counting rules, neither of them a real tokenizer: the dry run says so,
and with a model's `tokenizer.json` (`--tokenizer`) it counts exactly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import tempfile

from dss_keras.teacher import dry_run, extract
from dss_keras.teacher.backends.openai_compatible import OpenAIBackend
from dss_keras.teacher.tasks import get_template
from dss_keras.teacher.testing_server import FakeOpenAIServer


def release_inputs(task: str, data_dir: str, count: int) -> tuple[list[dict], dict]:
    """The first `count` training inputs of the release, and each one's PaLM completion."""
    from dss_keras.data.official import read_official

    records = [r for r in read_official(task, data_dir, "train").records
               if r.rationale is not None][:count]
    rows = [{"id": r.id, "input": r.input, "label": r.label} for r in records]
    template = get_template(task)
    replies = {template.render_input(r.input).split("\n")[0]:
               f"{r.rationale} {template.answer_format.marker} {r.llm_label}."
               for r in records}
    return rows, replies


def synthetic_inputs(count: int) -> tuple[list[dict], dict]:
    template = get_template("esnli")
    answers = itertools.cycle(template.render_answer(d) for d in template.demonstrations)
    rows = [{"id": str(i), "input": f"A man in a red coat walks his dog past shop {i}. </s> "
             f"A person is outdoors near shop {i}.", "label": "entailment"}
            for i in range(count)]
    return rows, {f"Premise: {r['input'].split(' </s> ')[0]}": next(answers) for r in rows}


def measure(task: str, rows: list[dict], replies: dict, folder: str, tokenizer=None) -> dict:
    inputs = os.path.join(folder, f"{task}.jsonl")
    with open(inputs, "w") as f:
        f.writelines(json.dumps(row) + "\n" for row in rows)
    output = os.path.join(folder, f"{task}.teacher.jsonl")
    estimate = dry_run(inputs, output, task, "openai", model="bench", tokenizer=tokenizer)

    def complete(prompt: str, index: int) -> str:
        return replies[prompt.split("\n")[0]]

    with FakeOpenAIServer(complete=complete) as server:
        used = extract(inputs, output, task, OpenAIBackend("bench", base_url=server.base_url,
                                                           concurrency=16))
    return {"task": task, "inputs": len(rows), "label": estimate.tokens_label,
            "prompt_estimate": estimate.prompt_tokens, "prompt_used": used.prompt_tokens,
            "completion_estimate": estimate.completion_tokens,
            "completion_used": used.completion_tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="the folder holding the release's cqa/ and svamp/")
    parser.add_argument("--tasks", nargs="+", default=["cqa", "svamp"])
    parser.add_argument("--count", type=int, default=500)
    parser.add_argument("--tokenizer", help="a tokenizer.json for the dry run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        if args.data_dir:
            cases = [(task, *release_inputs(task, args.data_dir, args.count))
                     for task in args.tasks]
        else:
            cases = [("esnli", *synthetic_inputs(args.count))]
        for task, rows, replies in cases:
            row = measure(task, rows, replies, folder, args.tokenizer)
            print(f"{task}, {row['inputs']} inputs ({row['label']}):")
            for kind in ("prompt", "completion"):
                estimate, used = row[f"{kind}_estimate"], row[f"{kind}_used"]
                print(f"  {kind} tokens: dry run {estimate:,}, the server counted {used:,} "
                      f"(estimate / used {estimate / used:.3f})")


if __name__ == "__main__":
    main()
