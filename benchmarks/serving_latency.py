"""Serving cost on CPU: label-only SavedModel vs rationale-then-label vs a PyTorch peer.

Prints latency (p50/p95 at batch 1) and throughput (batch 32) of

  (a) the exported SavedModel's `serving_default` signature: label only, what a
      distilling step-by-step model pays at serving time;
  (b) the same SavedModel decoding a rationale (`explain`, up to
      `--rationale-length` tokens) and then the label: what a chain-of-thought
      deployment of the same model pays;
  (c) PyTorch + transformers `generate()` (greedy, KV cache) of a randomly
      initialised `T5ForConditionalGeneration` of the same shape, on the same
      token ids, for the label length.

The models are randomly initialised, so they rarely emit the end token: every
side decodes a fixed number of tokens (SavedModel exported with
`stop_at_end_token=False`; `min_new_tokens == max_new_tokens` for PyTorch), and
every input is truncated to `--input-length` tokens. The SavedModel timings
include tokenization and detokenization inside the graph; the PyTorch timings
get token ids (no tokenizer). Requests of (a), (b) and (c) are interleaved so
that load from other processes hits all sides alike.

Run (defaults: a t5-v1.1-small shape; 3-5 minutes on 2 cores):

    python benchmarks/serving_latency.py
    python benchmarks/serving_latency.py --num-layers 2 --requests 10   # quicker

Needs `pip install torch==2.13.0 transformers` for (c) (`--skip-torch` without).
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


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
    run.add_argument("--skip-torch", action="store_true")
    run.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    threads = args.threads or os.cpu_count()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)

    texts = make_texts(args.requests + args.batch_size * args.batches)
    model = build_keras_model(args)
    preprocessor = model.preprocessor
    started = time.perf_counter()
    from dss_keras import export

    with tempfile.TemporaryDirectory(prefix="dss_bench_") as folder:
        path = export.export_for_serving(model, folder, stop_at_end_token=False)
        export_seconds = time.perf_counter() - started
        import tensorflow_text  # noqa: F401

        loaded = tf.saved_model.load(path)
    label_fn = loaded.signatures["serving_default"]
    rationale_fn = loaded.signatures["explain"]

    def label_only(batch):
        return label_fn(text=tf.constant(batch))["label"].numpy()

    def rationale_then_label(batch):
        rationale_fn(text=tf.constant(batch))["rationale"].numpy()
        return label_fn(text=tf.constant(batch))["label"].numpy()

    singles = [[text] for text in texts[: args.requests]]
    batches = [
        texts[args.requests + i * args.batch_size : args.requests + (i + 1) * args.batch_size]
        for i in range(args.batches)
    ]
    sides = {"(a) label only": label_only, "(b) rationale, then label": rationale_then_label}
    if not args.skip_torch:
        sides["(c) PyTorch generate(), label"] = build_torch_peer(
            args, threads, preprocessor, singles + batches
        )
    for side in sides.values():  # warm up both shapes
        side(singles[0])
        side(batches[0])
    latencies = interleaved(sides, singles)
    seconds = interleaved(sides, batches)

    results = {}
    for name in sides:
        lat = np.array(latencies[name]) * 1000
        results[name] = {
            "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95)),
            "examples_per_s": args.batch_size * len(batches) / float(np.sum(seconds[name])),
        }
    report(args, threads, export_seconds, results)
    return results


def interleaved(sides: dict, requests: list) -> dict:
    """Times every side on every request, sides taking turns request by request."""
    timings = {name: [] for name in sides}
    for request in requests:
        for name, side in sides.items():
            started = time.perf_counter()
            side(request)
            timings[name].append(time.perf_counter() - started)
    return timings


def make_texts(count: int) -> list[str]:
    """Distinct toy inputs, each long enough to be truncated to the input length."""
    from dss_keras import testing

    records = testing.toy_records(count * 4, seed=1)
    return [" ".join(r.input for r in records[i * 4 : i * 4 + 4]) for i in range(count)]


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


def build_torch_peer(args, threads: int, preprocessor, requests: list):
    """A `generate()` callable; the token ids of every request are made beforehand."""
    import torch
    import transformers

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
    peer = transformers.T5ForConditionalGeneration(config).eval()
    encoded = {}
    for batch in requests:
        inputs = preprocessor.encode_inputs(batch, "label")
        encoded[tuple(batch)] = {
            "input_ids": torch.from_numpy(inputs["encoder_token_ids"].numpy().astype(np.int64)),
            "attention_mask": torch.from_numpy(
                inputs["encoder_padding_mask"].numpy().astype(np.int64)
            ),
        }

    def generate(batch):
        with torch.inference_mode():
            return peer.generate(
                **encoded[tuple(batch)],
                do_sample=False,
                num_beams=1,
                min_new_tokens=args.label_length,
                max_new_tokens=args.label_length,
            )

    return generate


def report(args, threads, export_seconds, results) -> None:
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(
        f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{threads} threads per side, load average {load} at the end; "
        f"model: d_model {args.hidden_dim}, {args.num_layers}+{args.num_layers} layers, "
        f"{args.num_heads} heads x {args.key_value_dim}, d_ff {args.intermediate_dim} (gated), "
        f"vocab {args.vocabulary_size}; input {args.input_length} tokens, label "
        f"{args.label_length}, rationale {args.rationale_length} (fixed lengths); "
        f"export took {export_seconds:.0f} s"
    )
    throughput = f"ex/s (b={args.batch_size})"
    print(f"{'side':34s} {'p50 ms (b=1)':>13s} {'p95 ms (b=1)':>13s} {throughput:>12s}")
    for name, row in results.items():
        p50, p95, rate = row["p50_ms"], row["p95_ms"], row["examples_per_s"]
        print(f"{name:34s} {p50:13.1f} {p95:13.1f} {rate:12.1f}")
    a = results["(a) label only"]
    for name, row in results.items():
        if name == "(a) label only":
            continue
        print(
            f"(a) vs {name}: {row['p50_ms'] / a['p50_ms']:.2f}x lower p50 latency, "
            f"{a['examples_per_s'] / row['examples_per_s']:.2f}x higher throughput"
        )


if __name__ == "__main__":
    main()
