"""A run's prompt, tokens and cost, before anything is sent.

`dry_run` prints what `extract` would send first, exactly (the JSON body of
the first request, or the prompt text for a local model), counts the prompt
tokens of every input still to label (`spending.TokenCounter`: a real
tokenizer when given one, otherwise an estimate, labelled as one), estimates
the completion tokens from the demonstrations' own answers, and with prices
per million tokens estimates the cost, and the most the run could cost (each
completion using its whole budget). It sends nothing and writes nothing.

Examples:

>>> import os, tempfile
>>> folder = tempfile.mkdtemp()
>>> _ = open(os.path.join(folder, "in.jsonl"), "w").write(
...     '{"id": "1", "input": "A dog runs. </s> An animal moves."}\\n')
>>> report = dry_run(os.path.join(folder, "in.jsonl"), os.path.join(folder, "out.jsonl"),
...                  "esnli", "openai", model="gpt-4o-mini",
...                  prices=Prices(input=0.15, output=0.60))
>>> report.to_send, report.requests, report.cost > 0, os.listdir(folder)
(1, 1, True, ['in.jsonl'])
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import statistics

from dss_keras.teacher.backends.adaptation import RequestParameters, request_body
from dss_keras.teacher.extraction import Sampling, extract, prepare_inputs
from dss_keras.teacher.output_file import scan
from dss_keras.teacher.tasks import resolve_template
from dss_keras.teacher.spending import TOKENS_PER_MESSAGE, Prices, TokenCounter


@dataclasses.dataclass
class DryRunReport:
    """What a run would send and spend.

    Attributes:
        first_request: The first request as it would be sent: its JSON body,
            or the prompt text for a local model.
        inputs, skipped, to_send: Inputs in all, already in the output, left.
        requests: Requests to send (one per input, or one per sample where
            the endpoint takes `n = 1` only).
        prompt_tokens: Of every request still to send.
        completion_tokens: Estimated: the demonstrations' answers' mean, times
            the samples, for every input left.
        budget: Completion tokens each request may use at most.
        tokens_label: How the tokens are counted (estimate or tokenizer).
        reasoning: Whether the model is known to reason (its reasoning adds
            completion tokens that no dry run can know, up to the budget).
        cost, max_cost: Estimated, and with every completion at its budget;
            `None` without prices.
    """

    first_request: dict | str | None
    inputs: int
    skipped: int
    to_send: int
    requests: int
    prompt_tokens: int
    completion_tokens: int
    budget: int
    tokens_label: str
    reasoning: bool = False
    prices: Prices | None = None
    cost: float | None = None
    max_cost: float | None = None

    def __str__(self) -> str:
        first = (json.dumps(self.first_request, indent=2, ensure_ascii=False)
                 if isinstance(self.first_request, dict) else self.first_request)
        lines = ["Dry run: nothing is sent and nothing is written.", ""]
        if first is not None:
            lines += ["The first request, exactly as it would be sent:", first, ""]
        lines += [
            f"Inputs: {self.inputs} ({self.skipped} already in the output, {self.to_send} to "
            f"send in {self.requests} requests)",
            f"Prompt tokens: {self.prompt_tokens:,} ({self.tokens_label})",
            f"Completion tokens: about {self.completion_tokens:,} (the demonstrations' answers; "
            f"at most {self.budget:,} a request)"
            + ("; a reasoning model adds its reasoning, up to that budget" if self.reasoning
               else ""),
        ]
        if self.cost is not None:
            lines.append(f"Estimated cost: ${self.cost:,.4f} at ${self.prices.input:g} / "
                         f"${self.prices.output:g} per million input / output tokens "
                         f"(at most ${self.max_cost:,.4f} if every completion uses its budget)")
        else:
            lines.append("Cost: give the prices per million input and output tokens "
                         "(--price-input, --price-output) to estimate it")
        return "\n".join(lines)


def dry_run(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    task,
    backend: str = "openai",
    *,
    tokenizer: str | os.PathLike | None = None,
    **options,
) -> DryRunReport:
    """What `extract` with the same arguments would send and spend; sends and writes nothing.

    Args:
        input_path, output_path, task, backend: As `extract`'s (a backend by name).
        tokenizer: A Hugging Face `tokenizer.json` to count tokens with;
            without one, tokens are estimated (and said to be).
        **options: `extract`'s keyword arguments; those that shape the
            requests count (`model`, `backend_options`, the prompt's, the
            sampling's, `limit`, `retry_failed`, `prices`).

    Returns:
        A `DryRunReport`.
    """
    known = inspect.signature(extract).parameters
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"dry_run() got arguments that extract() does not take: {unknown}")
    get = {name: options.get(name, parameter.default) for name, parameter in known.items()}.get
    template = resolve_template(task, get("demonstrations"), get("answer_format"),
                                get("instruction"), get("prompt_version"))
    records = prepare_inputs(os.fspath(input_path), template, get("limit"))
    settings = dict(get("backend_options") or {})
    parameters = settings.get("parameters") or RequestParameters()
    sampling = Sampling.of(get("samples"), get("temperature"), get("max_tokens"))
    model, route = get("model"), settings.get("route", "chat")
    entries, _ = scan(os.fspath(output_path), model, template.versions) if model else scan(
        os.fspath(output_path))
    done = {k for k, entry in entries.items() if entry.status == "ok" or not get("retry_failed")}
    todo = [r for r in records if r.id not in done]
    counter = TokenCounter(tokenizer)
    first = None
    if todo:
        prompt = template.prompt(todo[0].input)
        first = (request_body(model or "", route, prompt, parameters, sampling.samples,
                              sampling.temperature, sampling.max_tokens, template.stop,
                              settings.get("seed")) if backend == "openai" else prompt.text)
    requests_per_input = sampling.samples if "n" in parameters.omitted else 1
    prompt_tokens = requests_per_input * _prompt_tokens(
        template, todo, counter, chat=backend == "openai" and route == "chat")
    answer = statistics.fmean(counter.count(" " + template.render_answer(d))
                              for d in template.demonstrations)
    completion_tokens = round(answer * sampling.samples * len(todo))
    budget = parameters.budget(sampling.max_tokens)
    prices = get("prices")
    report = DryRunReport(first, len(records), len(records) - len(todo), len(todo),
                          len(todo) * requests_per_input, prompt_tokens, completion_tokens,
                          budget, counter.label, parameters.reasoning, prices)
    if prices is not None:
        report.cost = prices.cost(prompt_tokens, completion_tokens)
        report.max_cost = prices.cost(prompt_tokens, budget * sampling.samples * len(todo))
    return report


def _prompt_tokens(template, records, counter: TokenCounter, chat: bool) -> int:
    """Prompt tokens of `records`: the shared demonstrations counted once, each input's part."""
    if not records:
        return 0
    first = template.prompt(records[0].input)
    if chat:
        shared = counter.count_prompt(first, chat=True) - TOKENS_PER_MESSAGE - counter.count(
            first.messages[-1]["content"])
        return len(records) * (shared + TOKENS_PER_MESSAGE) + sum(
            counter.count(template.render_input(r.input)) for r in records)
    shown = template.shown()
    shared = counter.count(shown + "\n\n") if shown else 0
    return len(records) * shared + sum(
        counter.count(template.render_input(r.input) + "\nA:") for r in records)
