"""Serving cost on CPU: the label-only SavedModel at three precisions, the one-pass scorer,
and PyTorch `generate()`, each against this machine's floor.

Sides, all on the same inputs (multiple-choice questions in CQA's layout, cut
at `--input-length` tokens), requests interleaved side by side so that load
from other processes hits all of them alike:

- `float32`, `bfloat16`, `int8`: the exported SavedModel's `serving_default`
  (greedy generation of the label, `--label-length` tokens), exported at that
  precision (`dss-keras export --precision`);
- `choose_label <precision>`: the same exports' `choose_label` signature,
  which scores the input's choices in one decoder pass;
- `torch <dtype>`: PyTorch + transformers `generate()` (greedy, KV cache) of a
  `T5ForConditionalGeneration` of the same shape, in float32 and, where it
  runs, bfloat16, for `--label-length` tokens; and `torch <dtype>, N tokens`:
  the same generating just enough tokens for the longest choice (N, its end
  token included), the like-for-like peer of the scorer;
- with `--rationale`, `rationale then label float32`: `explain`, then
  `serving_default`: what a chain-of-thought deployment pays.

The models are randomly initialised, so generation rarely ends by itself:
every generating side decodes a fixed number of tokens (exports with
`stop_at_end_token=False`; `min_new_tokens == max_new_tokens` for PyTorch).
SavedModel timings include tokenization and detokenization in the graph;
PyTorch gets token ids. Each figure is also stated as a fraction of the floor
`serving_floor.py` computes for this machine (bytes over measured memory speed,
FLOPs over measured matrix speed, whichever is longer).

Labels changed against float32 come from trained runs, not from these random
weights: `--agreement-runs RUN_DIR ...` exports each run at every precision and
compares labels on its test records (`serving_agreement.py`).

Run (a t5-v1.1-small shape; about 10 minutes on 2 busy cores):

    python benchmarks/serving_latency.py --threads 1 --json-out serving.json \\
        --agreement-runs runs/quickstart/seed-0/distill_step_by_step runs/cqa-tiny
    python benchmarks/serving_latency.py --num-layers 2 --requests 10   # quicker

The PyTorch sides need `pip install torch==2.13.0 transformers`; without them
(or with `--skip-torch`) the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import serving_floor  # noqa: E402

PRECISIONS = ("float32", "bfloat16", "int8")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    shape = parser.add_argument_group("model shape (default: t5-v1.1-small)")
    shape.add_argument("--vocabulary-size", type=int, default=32128)
    shape.add_argument("--hidden-dim", type=int, default=512)
    shape.add_argument("--num-layers", type=int, default=8, help="encoder and decoder each")
    shape.add_argument("--num-heads", type=int, default=6)
    shape.add_argument("--key-value-dim", type=int, default=64)
    shape.add_argument("--intermediate-dim", type=int, default=1024)
    lengths = parser.add_argument_group("lengths (tokens)")
    lengths.add_argument("--input-length", type=int, default=64)
    lengths.add_argument("--label-length", type=int, default=16)
    lengths.add_argument("--rationale-length", type=int, default=128)
    run = parser.add_argument_group("run")
    run.add_argument("--requests", type=int, default=20, help="batch-1 requests per side")
    run.add_argument("--batch-size", type=int, default=32)
    run.add_argument("--batches", type=int, default=3, help="throughput batches per side")
    run.add_argument("--threads", type=int, default=0, help="0: all cores")
    run.add_argument("--precisions", default=",".join(PRECISIONS),
                     help="precisions of our exports, comma-separated")
    run.add_argument("--scorer-precisions", default="float32,bfloat16",
                     help="precisions whose `choose_label` signature is timed")
    run.add_argument("--skip-torch", action="store_true")
    run.add_argument("--rationale", action="store_true",
                     help="also time rationale-then-label (float32)")
    run.add_argument("--agreement-runs", nargs="*", default=[],
                     help="trained run directories whose test labels give `labels_changed`")
    run.add_argument("--json-out", help="write one object per side to this file")
    run.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    # The floor: this machine's speeds, best of a measurement before and after the sides.
    machine = serving_floor.measure_machine()
    texts = make_texts(args.requests + args.batch_size * args.batches)
    model = build_keras_model(args)
    singles = [[text] for text in texts[: args.requests]]
    batches = [texts[args.requests + i * args.batch_size:][: args.batch_size]
               for i in range(args.batches)]
    choice_tokens = longest_choice_tokens(model.preprocessor, texts)
    started = time.perf_counter()
    sides = our_sides(args, model, tf)
    export_seconds = time.perf_counter() - started
    if not args.skip_torch:
        sides.update(torch_sides(args, threads, model.preprocessor, singles + batches,
                                 choice_tokens))
    for side in sides.values():  # warm up both shapes
        side.run(singles[0])
        side.run(batches[0])
    latencies = interleaved(sides, singles)
    seconds = interleaved(sides, batches)

    machine = serving_floor.fastest(machine, serving_floor.measure_machine())
    counts = serving_floor.ModelCounts.of(model.seq2seq_lm)
    candidates = choices_per_input(texts)
    agreement = {run: _agreement(run) for run in args.agreement_runs}
    rows = []
    for name, side in sides.items():
        lat = np.array(latencies[name]) * 1000
        work = side.work(counts, args, candidates, choice_tokens)
        rows.append({
            "side": name,
            "precision": side.precision,
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "examples_per_second": args.batch_size * len(batches) / float(np.sum(seconds[name])),
            "floor_p50_ms": 1000 * serving_floor.floor_seconds(machine, work(1), side.precision),
            "floor_examples_per_second": args.batch_size / serving_floor.floor_seconds(
                machine, work(args.batch_size), side.precision),
            "labels_changed": labels_changed(agreement, name),
        })
    print(report(args, threads, machine, export_seconds, rows, agreement, choice_tokens))
    # Every side runs the encoder over every input: no side serves more than this.
    fastest = max(machine.matmul_flops_per_second.items(), key=lambda item: item[1])
    print(f"The encoder alone, at the fastest matrix speed measured ({fastest[0]}), caps any "
          f"side at {fastest[1] / counts.encoder_flops(args.input_length):.1f} examples/s")
    if args.json_out:
        with open(args.json_out, "w") as file:
            json.dump(rows, file, indent=2)
    return rows


class Side:
    """A callable on a batch of texts, its precision, and what one batch costs (`work`)."""

    def __init__(self, run, precision: str, kind: str, tokens: int | None = None):
        self.run, self.precision, self.kind, self.tokens = run, precision, kind, tokens

    def work(self, counts, args, candidates: int, choice_tokens: int):
        """`batch -> (bytes, FLOPs)` of one batch of this side."""
        if self.kind == "score":
            return lambda batch: counts.scoring(batch, args.input_length, candidates,
                                                choice_tokens, self.precision)
        steps = self.tokens or args.label_length
        if self.kind == "rationale":
            steps = args.rationale_length + args.label_length
        return lambda batch: counts.generation(batch, args.input_length, steps, self.precision)


def our_sides(args, model, tf) -> dict:
    """The exported SavedModels' signatures, one export per precision (in a temporary folder)."""
    import tensorflow_text  # noqa: F401

    from dss_keras import export

    sides = {}
    scorer_precisions = _names(args.scorer_precisions)
    with tempfile.TemporaryDirectory(prefix="dss_bench_") as folder:
        for precision in _names(args.precisions):
            path = export.export_for_serving(
                model, os.path.join(folder, precision), stop_at_end_token=False,
                precision=precision, label_set="choices")
            loaded = tf.saved_model.load(path)
            label = _caller(tf, loaded.signatures["serving_default"], "label")
            sides[precision] = Side(label, precision, "generate")
            if precision in scorer_precisions:
                chooser = _caller(tf, loaded.signatures["choose_label"], "label")
                sides[f"choose_label {precision}"] = Side(chooser, precision, "score")
            if args.rationale and precision == "float32":
                explain = _caller(tf, loaded.signatures["explain"], "rationale")
                sides["rationale then label float32"] = Side(
                    lambda batch, e=explain, f=label: (e(batch), f(batch))[1], precision,
                    "rationale")
    return sides


def _caller(tf, function, output: str):
    return lambda batch: function(text=tf.constant(batch))[output].numpy()


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


def interleaved(sides: dict, requests: list) -> dict:
    """Times every side on every request, sides taking turns request by request."""
    timings = {name: [] for name in sides}
    for request in requests:
        for name, side in sides.items():
            started = time.perf_counter()
            side.run(request)
            timings[name].append(time.perf_counter() - started)
    return timings


_CHOICES = ("Dee", "5 rocks", "Gus and Ana", "12", "the cups", "no pens", "Ana", "3 more")


def make_texts(count: int) -> list[str]:
    """Distinct multiple-choice inputs in CQA's layout, long enough to be cut at the input length."""
    from dss_keras import testing

    records = testing.toy_records(count * 3, seed=1)
    texts = []
    for i in range(count):
        question = " ".join(r.input for r in records[i * 3 : i * 3 + 3])
        choices = [_CHOICES[(i + k) % len(_CHOICES)] for k in range(5)]
        lines = [f"({letter}) {choice}" for letter, choice in zip("abcde", choices)]
        texts.append("\n".join([question, "Answer Choices:", *lines]))
    return texts


def choices_per_input(texts) -> int:
    from dss_keras.label_scorer import LabelSet

    return int(LabelSet(choices=True).candidates(texts[:1]).row_lengths()[0])


def longest_choice_tokens(preprocessor, texts) -> int:
    """Tokens of the longest choice's target (end token included): what generation needs."""
    from dss_keras.label_scorer import LabelSet

    choices = LabelSet(choices=True).candidates(texts).flat_values
    _, mask = preprocessor.encode_targets(choices, "label")
    return int(mask.shape[1])


def build_keras_model(args):
    """The model `dss-keras train` builds (`training.build_model`), around a T5 of `args`' shape."""
    from dss_keras import backbones, testing
    from dss_keras.config import TrainConfig
    from dss_keras.training import build_model

    # The toy vocabulary is small; the model's output layer has the full
    # vocabulary size, and ids the tokenizer lacks are dropped when detokenizing.
    lm = backbones.tiny_t5(
        proto=testing.toy_vocabulary(1000),
        embedding_size=args.vocabulary_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
        key_value_dim=args.key_value_dim,
        dropout=0.0,
        seed=args.seed,
    )
    config = TrainConfig(max_input_length=args.input_length, max_label_length=args.label_length,
                         max_rationale_length=args.rationale_length, seed=args.seed)
    return build_model(config, [], None, seq2seq_lm=lm)


def torch_sides(args, threads: int, preprocessor, requests: list, choice_tokens: int) -> dict:
    """`generate()` in float32 and bfloat16, for the label length and the longest choice."""
    try:
        import torch
        import transformers
    except ImportError as error:
        print(f"PyTorch sides skipped: {error}")
        return {}
    torch.set_num_threads(threads)
    torch.manual_seed(args.seed)
    config = transformers.T5Config(
        vocab_size=args.vocabulary_size,
        d_model=args.hidden_dim,
        d_kv=args.key_value_dim,
        d_ff=args.intermediate_dim,
        num_layers=args.num_layers,
        num_decoder_layers=args.num_layers,
        num_heads=args.num_heads,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    float32 = transformers.T5ForConditionalGeneration(config).eval()
    peers = {"float32": float32}
    try:
        bfloat16 = transformers.T5ForConditionalGeneration(config).eval()
        bfloat16.load_state_dict(float32.state_dict())
        peers["bfloat16"] = bfloat16.to(torch.bfloat16)
    except (RuntimeError, TypeError) as error:  # a build without bfloat16 on this CPU
        print(f"PyTorch bfloat16 skipped: {error}")
    encoded = {}
    for batch in requests:
        inputs = preprocessor.encode_inputs(batch, "label")
        encoded[tuple(batch)] = {
            "input_ids": torch.from_numpy(inputs["encoder_token_ids"].numpy().astype(np.int64)),
            "attention_mask": torch.from_numpy(
                inputs["encoder_padding_mask"].numpy().astype(np.int64)),
        }

    def generator(peer, tokens):
        def generate(batch):
            with torch.inference_mode():
                return peer.generate(**encoded[tuple(batch)], do_sample=False, num_beams=1,
                                     min_new_tokens=tokens, max_new_tokens=tokens)
        return generate

    sides = {}
    for dtype, peer in peers.items():
        sides[f"torch {dtype}"] = Side(generator(peer, args.label_length), dtype, "generate")
    for dtype, peer in peers.items():
        sides[f"torch {dtype}, {choice_tokens} tokens"] = Side(
            generator(peer, choice_tokens), dtype, "generate", choice_tokens)
    return sides


def _agreement(run_dir: str) -> dict:
    import serving_agreement

    sides = serving_agreement.run_agreement(run_dir)
    print(serving_agreement.format_run(run_dir, sides))
    return sides


def labels_changed(agreement: dict, side: str) -> float | None:
    """The largest share of labels changed against float32 over the trained runs (None: not measured)."""
    shares = [sides[side]["labels_changed"] for sides in agreement.values() if side in sides]
    return max(shares) if shares else None


def report(args, threads, machine, export_seconds, rows, agreement, choice_tokens) -> str:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    lines = [
        f"CPU: {_cpu_name()}, {os.cpu_count()} cores, {threads} threads per side, load average "
        f"{load} at the end; model: d_model {args.hidden_dim}, {args.num_layers}+"
        f"{args.num_layers} layers, {args.num_heads} heads x {args.key_value_dim}, d_ff "
        f"{args.intermediate_dim} (gated), vocab {args.vocabulary_size}; input "
        f"{args.input_length} tokens, label {args.label_length} (fixed), 5 choices of at most "
        f"{choice_tokens} tokens; exports took {export_seconds:.0f} s",
        f"Floor: {machine.describe()}",
        "",
        f"{'side':30s}{'p50 ms':>9s}{'p95 ms':>9s}{'floor':>8s}{'of floor':>9s}"
        f"{'ex/s b=' + str(args.batch_size):>11s}{'floor':>8s}{'of floor':>9s}{'changed':>9s}",
    ]
    for row in rows:
        changed = row["labels_changed"]
        lines.append(
            f"{row['side']:30s}{row['p50_ms']:9.1f}{row['p95_ms']:9.1f}"
            f"{row['floor_p50_ms']:8.1f}{row['floor_p50_ms'] / row['p50_ms']:9.0%}"
            f"{row['examples_per_second']:11.1f}{row['floor_examples_per_second']:8.1f}"
            f"{row['examples_per_second'] / row['floor_examples_per_second']:9.0%}"
            f"{'n/a' if changed is None else f'{changed:.2%}':>9s}")
    lines += [""] + comparisons(rows, choice_tokens)
    return "\n".join(lines)


def comparisons(rows: list[dict], choice_tokens: int) -> list[str]:
    """Ratios at the same precision, and best against best."""
    by_side = {row["side"]: row for row in rows}
    lines = []

    def ratio(ours, theirs, label):
        if ours in by_side and theirs in by_side:
            a, b = by_side[ours], by_side[theirs]
            lines.append(f"{label}: {b['p50_ms'] / a['p50_ms']:.2f}x lower p50, "
                         f"{a['examples_per_second'] / b['examples_per_second']:.2f}x "
                         f"the examples/s")

    for precision in ("float32", "bfloat16"):
        ratio(precision, f"torch {precision}", f"{precision} vs torch {precision}")
        ratio(f"choose_label {precision}", f"torch {precision}, {choice_tokens} tokens",
              f"choose_label {precision} vs torch {precision} generating the longest choice")
    ours_generating = [r for r in rows if r["side"] in PRECISIONS]
    ours_all = ours_generating + [r for r in rows if r["side"].startswith("choose_label")]
    theirs_label = [r for r in rows if r["side"] in ("torch float32", "torch bfloat16")]
    theirs_all = [r for r in rows if r["side"].startswith("torch")]
    for label, ours, theirs in (("best generation of ours vs best of theirs", ours_generating,
                                 theirs_label),
                                ("best of ours (scorer included) vs best of theirs (generating "
                                 "just the longest choice included)", ours_all, theirs_all)):
        if ours and theirs:
            fast = min(ours, key=lambda r: r["p50_ms"])
            fast_theirs = min(theirs, key=lambda r: r["p50_ms"])
            many = max(ours, key=lambda r: r["examples_per_second"])
            many_theirs = max(theirs, key=lambda r: r["examples_per_second"])
            lines.append(
                f"{label}: p50 {fast['side']} {fast['p50_ms']:.1f} ms vs {fast_theirs['side']} "
                f"{fast_theirs['p50_ms']:.1f} ms ({fast_theirs['p50_ms'] / fast['p50_ms']:.2f}x); "
                f"examples/s {many['side']} {many['examples_per_second']:.1f} vs "
                f"{many_theirs['side']} {many_theirs['examples_per_second']:.1f} "
                f"({many['examples_per_second'] / many_theirs['examples_per_second']:.2f}x)")
    lines += targets_against_floors(ours_generating, theirs_label, ours_all[len(ours_generating):],
                                    theirs_all)
    return lines


def targets_against_floors(generating, theirs_generating, scoring, theirs_all) -> list[str]:
    """What 3x PyTorch's best asks of each of our sides, as a fraction of that side's floor:
    above 100%, no program of that side reaches it on this machine."""
    lines = []
    for ours, theirs in ((generating, theirs_generating), (scoring, theirs_all)):
        if not (ours and theirs):
            continue
        fast = min(theirs, key=lambda r: r["p50_ms"])
        many = max(theirs, key=lambda r: r["examples_per_second"])
        p50, rate = fast["p50_ms"] / 3, 3 * many["examples_per_second"]
        lines.append(f"3x target against {fast['side']} and {many['side']}: p50 {p50:.1f} ms, "
                     f"{rate:.1f} examples/s")
        for row in ours:
            lines.append(
                f"  {row['side']}: asks {row['floor_p50_ms'] / p50:.0%} of its batch-1 floor "
                f"({row['floor_p50_ms']:.1f} ms) and {rate / row['floor_examples_per_second']:.0%} "
                f"of its batch-32 floor ({row['floor_examples_per_second']:.1f} examples/s)")
    return lines


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
