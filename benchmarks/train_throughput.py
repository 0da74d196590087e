"""Training throughput of distilling step-by-step: dss-keras against a PyTorch reference.

Both sides train the t5-v1_1-small shape (d_model 512, 8 encoder and 8 decoder
layers, 6 heads, d_kv 64, d_ff 1024 gated tanh-GELU, vocabulary 32128, random
init, dropout 0.1) with AdamW at batch 8 on the same CQA records with PaLM
rationales (inputs up to 256 tokens, labels up to 16, rationales up to 128),
tokenized with the same SentencePiece model. The reference
(`torch_reference_train.py`) runs the authors' step: two forward passes of
`T5ForConditionalGeneration` with labels, alpha-weighted, AdamW, random
batches padded to their longest member. Each side runs in its own process, so
peak memory is its own.

    python benchmarks/train_throughput.py                 # ~10 minutes on 2 cores
    python benchmarks/train_throughput.py --steps 10 --variants default

Prints examples/s, seconds/step and peak RSS per side and the ratios against
the reference; `--json-out` writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "dss_official"
SHAPE = dict(vocabulary_size=32128, num_layers=8, num_heads=6, hidden_dim=512,
             intermediate_dim=1024, key_value_dim=64, dropout=0.1)
# name -> (jit_compile, length bucketing)
VARIANTS = {
    "default": (False, True),
    "xla": (True, True),
    "no-bucketing": (False, False),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("DSS_DATA_DIR", str(DEFAULT_DATA)))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=20, help="timed steps per side")
    p.add_argument("--warmup-steps", type=int, default=3)
    p.add_argument("--num-records", type=int, default=2000)
    p.add_argument("--variants", default="default,xla,no-bucketing",
                   help=f"comma-separated dss-keras variants of {sorted(VARIANTS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="intra-op threads of each side (TF and torch)")
    p.add_argument("--skip-reference", action="store_true")
    p.add_argument("--json-out")
    # Internal: run one dss-keras variant in this process.
    p.add_argument("--side", choices=("driver", "keras"), default="driver",
                   help=argparse.SUPPRESS)
    p.add_argument("--variant", default="default", help=argparse.SUPPRESS)
    p.add_argument("--records", help=argparse.SUPPRESS)
    p.add_argument("--spm", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def prepare_inputs(args, workdir: Path) -> tuple[Path, Path]:
    """CQA train records with a rationale, as JSONL, and a SentencePiece model."""
    from dss_keras.backbones import train_sentencepiece
    from dss_keras.data.official import load_official
    from dss_keras.data.records import write_jsonl

    records = [r for r in load_official("cqa", args.data_dir, "train") if r.rationale]
    records = records[: args.num_records]
    texts = []
    for r in records:
        texts += [r.input, r.label, r.rationale]
    spm = workdir / "spm.model"
    spm.write_bytes(train_sentencepiece(texts, vocabulary_size=8000))
    path = workdir / "records.jsonl"
    write_jsonl(records, path)
    return path, spm


def run_keras(args) -> dict:
    """One dss-keras variant: fit for warmup + timed steps, timing each batch."""
    import keras
    import tensorflow as tf

    from dss_keras.backbones import tiny_t5
    from dss_keras.data import make_dataset
    from dss_keras.data.records import read_jsonl
    from dss_keras.model import DistillStepByStep

    jit_compile, bucketing = VARIANTS[args.variant]
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    lm = tiny_t5(proto=Path(args.spm).read_bytes(), embedding_size=SHAPE["vocabulary_size"],
                 **{k: v for k, v in SHAPE.items() if k != "vocabulary_size"})
    model = DistillStepByStep(lm, alpha=0.5, max_input_length=256, max_label_length=16,
                              max_rationale_length=128)
    model.compile(optimizer=keras.optimizers.AdamW(5e-5, weight_decay=0.0),
                  jit_compile=jit_compile)
    dataset, _ = make_dataset(
        read_jsonl(args.records), model.preprocessor, batch_size=args.batch_size,
        seed=0, repeat=True, drop_remainder=True,
        bucket_boundaries=None if bucketing else [],
    )

    class Timer(keras.callbacks.Callback):
        times, cpu_times = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

    timer = Timer()
    total = args.warmup_steps + args.steps
    model.fit(dataset, steps_per_epoch=total, epochs=1, callbacks=[timer], verbose=0)
    seconds = timer.times[-1] - timer.times[args.warmup_steps - 1]
    cpu_seconds = timer.cpu_times[-1] - timer.cpu_times[args.warmup_steps - 1]
    tokens = {"input_tokens": 0, "label_tokens": 0, "rationale_tokens": 0}
    for x, _, w in dataset.take(args.steps):
        tokens["input_tokens"] += int(tf.reduce_sum(x["label"]["encoder_padding_mask"]))
        tokens["label_tokens"] += int(tf.reduce_sum(w["label"]))
        tokens["rationale_tokens"] += int(tf.reduce_sum(w["rationale"]))
    return {
        "side": f"dss-keras ({args.variant})",
        "examples_per_second": args.batch_size * args.steps / seconds,
        "seconds_per_step": seconds / args.steps,
        "cpu_seconds_per_step": cpu_seconds / args.steps,
        "threads": args.threads,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": args.steps,
        "batch_size": args.batch_size,
        "jit_compile": jit_compile,
        "bucketing": bucketing,
        "tensorflow_version": tf.__version__,
        **{k: v / args.steps for k, v in tokens.items()},
    }


def _run_json(command: list[str], json_path: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-4000:]}")
    return json.loads(json_path.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side == "keras":
        result = run_keras(args)
        Path(args.json_out).write_text(json.dumps(result))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"Unknown variant {variant!r}; choose from {sorted(VARIANTS)}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        records, spm = prepare_inputs(args, workdir)
        common = ["--records", str(records), "--spm", str(spm),
                  "--batch-size", str(args.batch_size), "--steps", str(args.steps),
                  "--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads)]
        results = []
        if not args.skip_reference:
            out = workdir / "torch.json"
            reference = _run_json(
                [sys.executable, str(HERE / "torch_reference_train.py"), *common,
                 "--json-out", str(out)], out)
            reference["side"] = "PyTorch reference"
            results.append(reference)
        for variant in variants:
            out = workdir / f"keras-{variant}.json"
            results.append(_run_json(
                [sys.executable, __file__, "--side", "keras", "--variant", variant, *common,
                 "--json-out", str(out)], out))

    base = results[0]["examples_per_second"] if not args.skip_reference else None
    print(f"\nbatch {args.batch_size}, {args.steps} timed steps after {args.warmup_steps} "
          f"warm-up steps, {os.cpu_count()} CPU cores\n")
    print(f"{'side':32s}{'examples/s':>12s}{'s/step':>9s}{'CPU s/step':>12s}"
          f"{'peak RSS MB':>13s}{'vs reference':>14s}")
    for r in results:
        ratio = f"{r['examples_per_second'] / base:13.2f}x" if base else ""
        cpu = r.get("cpu_seconds_per_step")
        if cpu is None and "phase_cpu_seconds_per_step" in r:
            cpu = sum(r["phase_cpu_seconds_per_step"].values())
        cpu = f"{cpu:12.2f}" if cpu is not None else f"{'':12s}"
        print(f"{r['side']:32s}{r['examples_per_second']:12.2f}{r['seconds_per_step']:9.3f}"
              f"{cpu}{r['peak_rss_mb']:13.0f}{ratio}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
