"""Training throughput of distilling step-by-step: dss-keras against the authors' code.

Every side trains the t5-v1_1-small shape (d_model 512, 8 encoder and 8
decoder layers, 6 heads, d_kv 64, d_ff 1024 gated tanh-GELU, vocabulary 32128,
random init, dropout 0.1) on both tasks at batch 8 on the CQA training records
with PaLM rationales, tokenized with one SentencePiece model trained here, all
sequences cut at 256 tokens, with the authors' optimizer (AdamW, epsilon 1e-8,
no weight decay, linear decay from 5e-5 or `--learning-rate`, clipping at global
norm 1.0). Each side runs in its own process, one after the other, so peak RSS is
its own.

Sides:
- `official`: the authors' `run.py` (PyTorch, Hugging Face Trainer) through
  `run_official.sh` in the folder given to `--official`, on the same
  records, SentencePiece model, shape and batch size (its first run installs
  torch into its own venv). A `sitecustomize` hook (official_hooks/) counts
  the tokens of the batches its collator builds; nothing else is changed.
- `reference`: `torch_reference_train.py`, this project's re-expression of
  their step in plain PyTorch (a second reference, not the peer).
- `dss-keras (<variant>)`: `DistillStepByStep.fit` with the options of
  VARIANTS: `fast` is what `dss-keras train` runs; `plain` turns every
  speed option off; `fast-<x>` is `fast` with one option changed and the
  others are `plain` plus one option, so that each is measured alone.

    python benchmarks/train_throughput.py --official PATH_TO_AUTHORS_CODE
    python benchmarks/train_throughput.py --steps 10 --variants fast --skip-reference
    python benchmarks/train_throughput.py --official PATH_TO_AUTHORS_CODE \
        --rounds 3 --skip-reference --variants fast
    python benchmarks/train_throughput.py --official PATH_TO_AUTHORS_CODE \
        --bf16 --skip-reference --variants fast

With `--same-start` (needs `--official`) every dss-keras side starts from the very
checkpoint the authors' side loads (the stand-in `run_official.sh` builds, read with
`dss_keras.hf_t5.load_checkpoint`), with dropout off on both sides, and trains on the
batches their collator built, in their order (both tasks of the same examples in each,
padded as theirs: no length buckets, so the speed is taken on their batches too);
after the speed table it prints both sides' loss after every step, step 1's relative
difference and the largest gap (`same_start.py`). Compare at a learning rate where the
curves move:

    python benchmarks/train_throughput.py --official PATH_TO_AUTHORS_CODE --same-start \
        --learning-rate 1e-3 --skip-reference --variants fast --warmup-steps 5 --steps 45

With `--bf16` both sides train in bfloat16 mixed precision (the authors' own
`--bf16`: torch autocast; Keras' `mixed_bfloat16` policy), which pays on CPUs
with AVX-512 BF16 or AMX and on GPUs; the reference has no bf16 mode.

Prints examples/s, seconds/step, peak RSS and the tokens (real and padded, per
step, from the timed batches) of each side, with ratios against `official`
(or the reference without it); `--json-out` writes every side with the same
keys. With `--rounds N` every side runs N times, alternating, each ratio is
taken against the first side of its own round (so that a slow drift of the
machine hits both), and a summary gives each side's ratios over the rounds.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import same_start  # noqa: E402 (in this folder)
MAX_LENGTH = 256  # the authors cut inputs (max_input_length) and targets (256) here
SHAPE = dict(vocabulary_size=32128, num_layers=8, num_heads=6, hidden_dim=512,
             intermediate_dim=1024, key_value_dim=64, dropout=0.1)
PLAIN = dict(logits_at_targets_only=False, shared_encoder_pass=False, cache_tokens=False,
             fused_adam=False, bucketing=True, jit_compile=False, lm_head_std=None,
             rematerialize=False, flat_train_function=False, release_memory=False,
             bfc_allocator=False, onednn=None, examples_per_row=1, inter_op_threads=None,
             one_pass_clip=False, malloc_arenas=None, autodiff_gelu=False, pad_to_multiple_of=16,
             autodiff_norm=False, autodiff_attention=False, autodiff_feed_forward=False,
             tf_cross_entropy=False, scaled_clip=False, glibc_mmap_threshold=False,
             keras_epsilon=False)
# What `dss-keras train` and the recipes run (`dss_keras.tf_fast_path.cpu_runtime` included: oneDNN
# kernels, TF_ENABLE_ONEDNN_OPTS=1, which pool CPU memory themselves; else the BFC allocator):
# both tasks' examples packed four to a row, one encoder and one decoder call per step.
# After the first step glibc's free heap goes back to the system, as the tensors are
# pooled (`release_memory=None`: `flat_train_function`'s default).
FAST = dict(PLAIN, logits_at_targets_only=True, fused_adam=True, flat_train_function=True,
            release_memory=None, bfc_allocator=True, onednn=True, examples_per_row=4,
            shared_encoder_pass=None, one_pass_clip=True, jit_compile="auto")
VARIANTS = {
    "fast": FAST,
    "plain": PLAIN,
    "fused-adam": dict(PLAIN, fused_adam=True),
    "gather": dict(PLAIN, logits_at_targets_only=True),
    "shared-encoder": dict(PLAIN, shared_encoder_pass=True),
    "cached-tokens": dict(PLAIN, cache_tokens=True),
    "no-bucketing": dict(PLAIN, bucketing=False),
    # Narrower length buckets than the default powers of two: from 16, about 12.5% apart
    # on multiples of 8 (less padding; not the default yet, see BENCHMARKS.md).
    "fast-narrow-buckets": dict(FAST, bucketing="narrow"),
    "all-four": dict(FAST, shared_encoder_pass=True, cache_tokens=True),
    "xla": dict(PLAIN, jit_compile=True),
    # `fast` under XLA (what a GPU or TPU runs: Keras' jit_compile="auto"): batches padded to
    # their length bucket's boundary, so one compilation per bucket; no packing under XLA.
    "fast-xla": dict(FAST, jit_compile=True),
    # Each T5 layer recomputed in the backward pass (memory for compute; opt-in).
    "fast-remat": dict(FAST, rematerialize=True),
    # Keras' two nested tf.functions (the `fast` of earlier runs); glibc's free heap
    # kept (`flat_train_function(release_memory=False)`, `fast` before it was handed back)
    # or always handed back after the first step (also with malloc'd tensors).
    "fast-keras-function": dict(FAST, flat_train_function=False),
    "fast-keep-heap": dict(FAST, release_memory=False),
    # The heap handed back after the first step, but glibc's own (rising) mmap threshold
    # kept, not `train_function.map_large_allocations`' fixed 256 KiB.
    "fast-glibc-mmap-threshold": dict(FAST, glibc_mmap_threshold=True),
    "fast-release-memory": dict(FAST, release_memory=True),
    # Without oneDNN's graph rewrites (TF_ENABLE_ONEDNN_OPTS=0; TensorFlow turns them on by
    # itself only on CPUs with AVX-512 VNNI, BF16 or AMX): MatMul runs in Eigen. Still
    # with the BFC allocator (TF_CPU_ALLOCATOR_USE_BFC=true).
    "fast-eigen": dict(FAST, onednn=False),
    # Neither: Eigen, and malloc for every CPU tensor, so each step's large tensors are
    # page-faulted in again (`fast` on an AVX2 CPU before either was the default).
    "fast-eigen-malloc": dict(FAST, onednn=False, bfc_allocator=False),
    # Packing (`dss_keras.tf_fast_path.packing`): `fast` without it (the default before packing), with
    # other row sizes, and with each task packed apart (two encoder and decoder calls).
    "fast-unpacked": dict(FAST, examples_per_row=1, shared_encoder_pass=False),
    "fast-pack2": dict(FAST, examples_per_row=2),
    "fast-pack8": dict(FAST, examples_per_row=8),
    "fast-pack2-per-task": dict(FAST, examples_per_row=2, shared_encoder_pass=False),
    "fast-pack4-per-task": dict(FAST, examples_per_row=4, shared_encoder_pass=False),
    "fast-pack8-per-task": dict(FAST, examples_per_row=8, shared_encoder_pass=False),
    # One op at a time, each on every intra-op thread (inter-op threads: 1, not --threads).
    "fast-pack2-per-task-serial": dict(FAST, examples_per_row=2, shared_encoder_pass=False,
                                       inter_op_threads=1),
    # Keras' gradient clipping (square, sum, then scale every gradient, every step).
    "fast-keras-clip": dict(FAST, one_pass_clip=False),
    # Every gradient multiplied by the clipping factor before the fused kernel (one more
    # read and write of each), not the factor folded into the kernel's scalars.
    "fast-scaled-clip": dict(FAST, scaled_clip=True),
    # glibc's malloc with at most two arenas (its default is 8 per core), set before
    # TensorFlow starts its threads: less heap kept per thread, maybe more lock waits.
    "fast-arenas2": dict(FAST, malloc_arenas=2),
    # T5's tanh-GELU differentiated op by op (its intermediates kept for the gradient), not
    # `dss_keras.tf_fast_path.activations.gelu_tanh`, which keeps only its input.
    "fast-autodiff-gelu": dict(FAST, autodiff_gelu=True),
    # KerasHub's T5LayerNorm and T5MultiHeadAttention differentiated op by op (the norms'
    # normalised values, attention's probabilities before and after dropout kept for the
    # gradient), not `dss_keras.tf_fast_path.lean_t5`'s, which compute them again.
    "fast-autodiff-norm": dict(FAST, autodiff_norm=True),
    "fast-autodiff-attention": dict(FAST, autodiff_attention=True),
    # KerasHub's T5TransformerLayer: its feed-forward block differentiated op by op (the
    # norm's output, the activation's output, the product and its dropout kept), not
    # `dss_keras.tf_fast_path.lean_feed_forward`, which keeps the input and the two projections.
    "fast-autodiff-feed-forward": dict(FAST, autodiff_feed_forward=True),
    # TensorFlow's fused `SparseSoftmaxCrossEntropyWithLogits` kernel for the token losses,
    # not `dss_keras.tf_fast_path.token_cross_entropy` (the same arithmetic as separate ops).
    "fast-tf-cross-entropy": dict(FAST, tf_cross_entropy=True),
    # Packed rows and projected target tokens at their exact counts, not rounded up to a
    # multiple of 16: a new shape in nearly every op of every step (the default before).
    "fast-exact-lengths": dict(FAST, pad_to_multiple_of=1),
    # The official stand-in's LM head init (Hugging Face's std 1.0, logits of std ~20).
    "fast-hf-init": dict(FAST, lm_head_std=1.0),
    # Adam's epsilon added where Keras adds it, to the root of the second moment before the
    # bias correction: an epsilon 1 / sqrt(1 - beta_2 ** t) times larger than the authors'
    # PyTorch AdamW (31.6x at the first step). Moves only weights whose gradients are near
    # epsilon (`--same-start` tells the difference).
    "fast-keras-epsilon": dict(FAST, keras_epsilon=True),
}
NARROW_BUCKETS = [16, 24, 32, 40, 48, 56, 64, 72, 80, 88, 96, 112, 128, 144, 160, 176, 200,
                  224, 256, 288, 320, 360, 408, 456]
TOKEN_KEYS = ("input_real", "input_padded", "target_real", "target_padded")
LEARNING_RATE = 5e-5  # the authors' run.py default
RECORD = "official_record"  # --same-start: the peer hook's folder in the work directory


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=os.environ.get("DSS_DATA_DIR"),
                   help="the release layout (cqa/cqa_train.json, cqa/llm/...)")
    p.add_argument("--official", metavar="DIR",
                   help="the authors' code with run_official.sh, run as the `official` side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=30, help="timed steps per side")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--variants", default="fast,plain",
                   help=f"comma-separated dss-keras variants of {list(VARIANTS)}")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="intra-op threads of each side (TF and torch)")
    p.add_argument("--skip-reference", action="store_true",
                   help="leave out torch_reference_train.py")
    p.add_argument("--torch-python",
                   help="the Python (with torch, transformers, sentencepiece) that runs the "
                        "reference; default: this one if it has torch, else the venv that "
                        "run_official.sh made ($VENV, default /tmp/dss-peer-venv)")
    p.add_argument("--bf16", action="store_true",
                   help="bfloat16 mixed precision on every side: the authors' own --bf16 "
                        "(torch autocast), Keras' mixed_bfloat16 policy for dss-keras")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every side this many times, alternating")
    p.add_argument("--learning-rate", type=float, default=LEARNING_RATE,
                   help="the peak of every side's linear decay (their run.py's --lr)")
    p.add_argument("--same-start", action="store_true",
                   help="dss-keras starts from the checkpoint the official side loads, "
                        "dropout off on both, on their batches in their order; prints "
                        "both sides' loss after every step (needs --official)")
    p.add_argument("--json-out")
    # Internal: run one dss-keras variant in this process.
    p.add_argument("--side", choices=("driver", "keras"), default="driver",
                   help=argparse.SUPPRESS)
    p.add_argument("--variant", default="fast", help=argparse.SUPPRESS)
    p.add_argument("--records", help=argparse.SUPPRESS)
    p.add_argument("--spm", help=argparse.SUPPRESS)
    p.add_argument("--official-record", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def load_inputs(data_dir: str | None = None) -> tuple[list, bytes]:
    """`prepare_inputs` for another script: the records and the SentencePiece model's bytes."""
    from dss_keras.data.records import read_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        args = parse_args([] if data_dir is None else ["--data-dir", data_dir])
        records_path, spm = prepare_inputs(args, Path(tmp))
        return read_jsonl(records_path), spm.read_bytes()


def prepare_inputs(args, workdir: Path) -> tuple[Path, Path]:
    """All CQA train records with a rationale, as JSONL, and their vocabulary of 8,000 pieces."""
    from dss_keras.data.official import load_official
    from dss_keras.data.records import write_jsonl
    from dss_keras.vocabulary import train_vocabulary

    if not args.data_dir:
        raise SystemExit("Name the authors' data release: --data-dir PATH or DSS_DATA_DIR=PATH.")
    records = [r for r in load_official("cqa", args.data_dir, "train") if r.rationale]
    spm = workdir / "spm.model"
    spm.write_bytes(train_vocabulary(records, vocabulary_size=8000))
    path = workdir / "records.jsonl"
    write_jsonl(records, path)
    return path, spm


def _counting(dataset, counts: list, examples_per_row: int = 1, joint: bool = False):
    """`dataset` that appends each batch's token counts to `counts` as it is produced.

    Batches are produced in the order they are consumed (prefetching only runs
    ahead), so `counts[i]` belongs to the i-th batch that `fit` trains on. With
    packing, the padded counts are the packed rows' sizes (those of both tasks
    together, counted on the label task, when `joint`).
    """
    import tensorflow as tf

    from dss_keras.tf_fast_path.packing import pack_task, stack_examples

    def note(*values):
        counts.append([int(v) for v in values])
        return 0

    def count(x, y, w):
        values = []
        packed_sizes = {}
        if examples_per_row > 1:  # what the model runs: the packed rows
            groups = [list(x)] if joint else [[task] for task in x]
            for group in groups:
                packed = pack_task(stack_examples([x[t] for t in group]), examples_per_row)
                for side in ("encoder", "decoder"):  # a joint group's rows count once
                    rows = tf.size(getattr(packed, f"{side}_token_ids"))
                    packed_sizes[group[0], side] = rows
                    packed_sizes.update({(t, side): 0 for t in group[1:]})
        for task in x:
            for side in ("encoder", "decoder"):
                mask = x[task][f"{side}_padding_mask"]
                values += [tf.reduce_sum(mask), packed_sizes.get((task, side), tf.size(mask))]
        done = tf.py_function(note, values, tf.int32)
        with tf.control_dependencies([done]):
            x = tf.nest.map_structure(tf.identity, x)
        return x, y, w

    return dataset.map(count)


# The variant options that are `DistillStepByStep` arguments, not `TrainConfig` fields.
MODEL_OPTIONS = ("logits_at_targets_only", "shared_encoder_pass", "pad_to_multiple_of")


def benchmark_config(options: dict, steps: int, batch_size: int, bf16: bool = False,
                     learning_rate: float = LEARNING_RATE):
    """The `TrainConfig` of a side: the authors' optimizer and budgets, the variant's fields."""
    from dss_keras.config import TrainConfig

    return TrainConfig(
        learning_rate=learning_rate, lr_schedule="linear", steps=steps, adam_epsilon=1e-8,
        adam_epsilon_placement="pytorch", clip_global_norm=1.0, batch_size=batch_size,
        max_input_length=MAX_LENGTH,
        max_label_length=MAX_LENGTH, max_rationale_length=MAX_LENGTH,
        rematerialize=options["rematerialize"], examples_per_row=options["examples_per_row"],
        jit_compile=str(options["jit_compile"]).lower(),  # "auto": XLA on GPUs only
        dtype_policy="mixed_bfloat16" if bf16 else "float32")


def build_variant(proto: bytes, records, options: dict, steps: int, batch_size: int,
                  bf16: bool = False, learning_rate: float = LEARNING_RATE,
                  checkpoint: str | None = None, batches: list | None = None):
    """The benchmark's model (compiled) and training dataset for one variant's options.

    The model comes from `dss_keras.training.build_model`, the function `dss-keras
    train` builds its models with, around a T5 of the benchmark's shape; `fast` changes
    nothing of it (`tests/test_train_throughput_report.py`). With `bf16` the backbone
    computes in bfloat16 (Keras' `mixed_bfloat16` policy). With `checkpoint` (a
    `transformers` T5 folder) the T5 is that one, dropout off; with `batches` (steps of
    `same_start.recorded_steps`) the dataset is those batches in their order, not the
    shuffled `records`.
    """
    import keras
    import numpy as np
    import tensorflow as tf
    from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm
    from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention
    from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer

    from dss_keras import hf_t5
    from dss_keras.backbones import tiny_t5
    from dss_keras.data import make_dataset
    from dss_keras.optimizers import clip_factor
    from dss_keras.tf_fast_path import task_losses, train_function
    from dss_keras.tf_fast_path.activations import (gelu_tanh, keras_hub_gelu_tanh,
                                                    swap_feedforward_activation)
    from dss_keras.tf_fast_path.lean_t5 import LEAN_CLASSES, swap_layer_class
    from dss_keras.training import build_model

    config = benchmark_config(options, steps, batch_size, bf16, learning_rate)
    dtype = None if config.dtype_policy == "float32" else config.dtype_policy
    if checkpoint:
        lm = hf_t5.load_checkpoint(checkpoint, dtype=dtype, dropout=0.0)
    else:
        lm = tiny_t5(proto=proto, embedding_size=SHAPE["vocabulary_size"], dtype=dtype,
                     **{k: v for k, v in SHAPE.items() if k != "vocabulary_size"})
    if options["lm_head_std"]:
        head = lm.backbone.token_embedding.reverse_embeddings
        head.assign(np.random.default_rng(0).normal(
            0.0, options["lm_head_std"], head.shape).astype("float32"))
    model = build_model(config, records, None, seq2seq_lm=lm, **{
        name: options[name] for name in MODEL_OPTIONS if options[name] != FAST[name]})
    if options["autodiff_gelu"]:
        swap_feedforward_activation(lm.backbone, gelu_tanh, keras_hub_gelu_tanh())
    for option, keras_hub_class in [("autodiff_norm", T5LayerNorm),
                                    ("autodiff_attention", T5MultiHeadAttention),
                                    ("autodiff_feed_forward", T5TransformerLayer)]:
        if options[option]:
            swap_layer_class(lm.backbone, LEAN_CLASSES[keras_hub_class], keras_hub_class)
    if options["tf_cross_entropy"]:  # this side's process only
        task_losses.sparse_cross_entropy = lambda logits, targets: (
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))
    optimizer = model.optimizer
    if not options["fused_adam"]:  # Keras' own AdamW update, op by op
        optimizer._fuses = lambda variable: False
    if not options["one_pass_clip"]:  # Keras' own global-norm clipping
        optimizer._clip_gradients = functools.partial(keras.optimizers.AdamW._clip_gradients,
                                                      optimizer)
    if options["keras_epsilon"]:
        optimizer.epsilon_placement = "keras"
    if options["scaled_clip"]:
        def scaled_gradients(grads):
            factor = clip_factor(grads, config.clip_global_norm)
            return [None if g is None else g * tf.cast(factor, g.dtype) for g in grads]

        optimizer._clip_gradients = scaled_gradients
    if not options["flat_train_function"]:  # Keras' two nested tf.functions
        model.make_train_function = functools.partial(keras.Model.make_train_function, model)
    if options["glibc_mmap_threshold"]:  # this side's process only
        train_function.map_large_allocations = lambda threshold=None: False
    if options["flat_train_function"] and options["release_memory"] is not None:
        model.train_function = train_function.flat_train_function(
            model, release_memory=options["release_memory"])
    if batches is not None:
        return model, same_start.recorded_dataset(batches, model.preprocessor)
    dataset, _ = make_dataset(
        records, model.preprocessor, batch_size=batch_size,
        seed=0, repeat=True, drop_remainder=True,
        bucket_boundaries={True: None, False: [], "narrow": NARROW_BUCKETS}[options["bucketing"]],
        cache_tokens=options["cache_tokens"], bounded_shapes=bool(model.jit_compile),
    )
    return model, dataset


def run_keras(args) -> dict:
    """One dss-keras variant: fit for warmup + timed steps, timing each batch."""
    options = VARIANTS[args.variant]
    os.environ["TF_CPU_ALLOCATOR_USE_BFC"] = "true" if options["bfc_allocator"] else "false"
    if options["malloc_arenas"]:
        m_arena_max = -8  # glibc's malloc.h
        if not ctypes.CDLL("libc.so.6").mallopt(m_arena_max, options["malloc_arenas"]):
            raise RuntimeError("glibc refused mallopt(M_ARENA_MAX)")
    if options["onednn"] is not None:
        os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1" if options["onednn"] else "0"
    from dss_keras import use_fast_cpu_runtime
    from dss_keras.quiet import quiet_tensorflow

    use_fast_cpu_runtime()  # as `dss-keras train` does; the variables set above win
    quiet_tensorflow()  # no C++ log lines from TensorFlow's import in the report
    import keras
    import numpy as np
    import tensorflow as tf

    from dss_keras.tf_fast_path.cpu_runtime import onednn_in_effect
    from dss_keras.data.records import read_jsonl

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(
        options["inter_op_threads"] or args.threads)
    total = args.warmup_steps + args.steps
    records = read_jsonl(args.records)
    checkpoint = batches = None
    if args.official_record:  # --same-start
        checkpoint = same_start.starting_checkpoint(args.official_record)
        batches = same_start.recorded_steps(args.official_record, total)
    model, dataset = build_variant(Path(args.spm).read_bytes(), records, options, total,
                                   args.batch_size, bf16=args.bf16,
                                   learning_rate=args.learning_rate, checkpoint=checkpoint,
                                   batches=batches)
    counts: list = []
    dataset = _counting(dataset, counts, options["examples_per_row"],
                        joint=options["shared_encoder_pass"])

    class Timer(keras.callbacks.Callback):
        times, cpu_times = [], []

        def on_train_batch_end(self, batch, logs=None):
            self.times.append(time.perf_counter())
            self.cpu_times.append(time.process_time())

    class Losses(keras.callbacks.Callback):
        steps = []

        def on_train_batch_end(self, batch, logs=None):
            self.steps.append([float(logs[k]) for k in ("loss", "label_loss", "rationale_loss")])

    timer, losses = Timer(), Losses()
    # --same-start: one step an epoch, so that the logged loss is the step's, not a mean.
    steps_per_epoch = 1 if batches else total
    start = time.perf_counter()
    model.fit(dataset, steps_per_epoch=steps_per_epoch, epochs=total // steps_per_epoch,
              callbacks=[timer] + ([losses] if batches else []), verbose=0)
    first_step = timer.times[0] - start
    durations = np.diff(timer.times[args.warmup_steps - 1:])
    median = float(np.median(durations))
    # Steps that took more than 3x the median compiled a new shape (XLA) or traced.
    slow = durations[durations > 3 * median]
    seconds = timer.times[-1] - timer.times[args.warmup_steps - 1]
    cpu_seconds = timer.cpu_times[-1] - timer.cpu_times[args.warmup_steps - 1]
    timed = np.array(counts[args.warmup_steps:total])  # [steps, task x (real, padded) x side]
    tokens = {
        "input_real": timed[:, 0::4].sum() / args.steps,
        "input_padded": timed[:, 1::4].sum() / args.steps,
        "target_real": timed[:, 2::4].sum() / args.steps,
        "target_padded": timed[:, 3::4].sum() / args.steps,
    }
    # Each side's padded size (batch x length, or packed rows x length): one per shape.
    shapes = {tuple(row[1::2]) for row in np.array(counts[:total])}
    same = {}
    if batches:
        ours = same_start.example_keys(records, model.preprocessor)
        theirs = [key for step in batches for key in same_start.step_keys(step)]
        same = {"checkpoint": checkpoint,
                "step_losses": [loss for loss, *_ in losses.steps],
                "step_task_losses": [tasks for _, *tasks in losses.steps],
                "examples_from_our_records": sum(key in ours for key in theirs),
                "examples_trained": len(theirs)}
    return {
        "side": f"dss-keras ({args.variant}{', bf16' if args.bf16 else ''})",
        "examples_per_second": args.batch_size * args.steps / seconds,
        "seconds_per_step": seconds / args.steps,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **{f"tokens_{k}": float(v) for k, v in tokens.items()},
        "median_seconds_per_step": median,
        "cpu_seconds_per_step": cpu_seconds / args.steps,
        "first_step_seconds": first_step,
        "slow_timed_steps": int(slow.size),
        "slow_timed_steps_extra_seconds": float((slow - median).sum()),
        "distinct_batch_shapes": len(shapes),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "options": options,
        "compute_dtype": model.seq2seq_lm.backbone.compute_dtype,
        "tensorflow_version": tf.__version__,
        "onednn_graph_rewrites": onednn_in_effect(),
        "learning_rate": args.learning_rate,
        **same,
    }


def official_env(args, spm: Path, workdir: Path) -> dict:
    """The environment of `run_official.sh`: the shape, steps and files of this benchmark.

    The hook in official_hooks/ counts the batches' tokens into `official_tokens.jsonl`,
    adds $DSS_PEER_RUN_ARGS to their command line (their run.py's `--lr`, and `--bf16`
    when this benchmark runs with `--bf16`) and writes that command line to
    `official_argv.json`. With `--same-start` their stand-in has no dropout, and the hook
    records their checkpoint, batches and losses in RECORD.
    """
    run_args = f"--lr {args.learning_rate}" + (" --bf16" if args.bf16 else "")
    same = {"STANDIN_DROPOUT": "0.0",
            "DSS_PEER_RECORD": str(workdir / RECORD)} if args.same_start else {}
    return {
        **os.environ,
        "MODES": "task_prefix", "DATASET": "cqa", "DATA_DIR": str(Path(args.data_dir).resolve()),
        "BS": str(args.batch_size), "MAXLEN": str(MAX_LENGTH), "THREADS": str(args.threads),
        "WARMUP": str(args.warmup_steps), "STEPS": str(args.warmup_steps + args.steps),
        "SPM_MODEL": str(spm), "MODEL_VOCAB": str(SHAPE["vocabulary_size"]),
        "JSON_OUT": str(workdir / "official.json"),
        "DSS_PEER_TOKEN_COUNTS": str(workdir / "official_tokens.jsonl"),
        "DSS_PEER_RUN_ARGS": run_args, **same,
        "DSS_PEER_ARGV_OUT": str(workdir / "official_argv.json"),
        "PYTHONPATH": os.pathsep.join(
            [str(HERE / "official_hooks")] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    }


def run_official(args, records: Path, spm: Path, workdir: Path) -> dict:
    """The authors' run.py through run_official.sh, with its batches' tokens counted."""
    official = Path(args.official).resolve()
    script = official / "run_official.sh"
    if not script.exists():
        raise SystemExit(f"--official {args.official}: no run_official.sh there")
    env = official_env(args, spm, workdir)
    out, counts, argv = (Path(env[key]) for key in
                         ("JSON_OUT", "DSS_PEER_TOKEN_COUNTS", "DSS_PEER_ARGV_OUT"))
    for stale in (out, counts, argv):  # from an earlier round
        stale.unlink(missing_ok=True)
    record = Path(env["DSS_PEER_RECORD"]) if args.same_start else None
    if record:
        shutil.rmtree(record, ignore_errors=True)
        record.mkdir()
    done = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{script} failed:\n{done.stderr[-4000:]}")
    result = json.loads(out.read_text().splitlines()[0])
    run_argv = json.loads(argv.read_text())
    if args.bf16 != ("--bf16" in run_argv):
        raise RuntimeError(f"their run.py ran without the precision asked for. Received: "
                           f"argv={run_argv}, bf16={args.bf16}")
    given = [float(value) for flag, value in zip(run_argv, run_argv[1:]) if flag == "--lr"]
    if (given[-1] if given else LEARNING_RATE) != args.learning_rate:  # argparse: the last
        raise RuntimeError(f"their run.py ran at another learning rate than asked for. "
                           f"Received: argv={run_argv}, learning_rate={args.learning_rate}")
    calls = [json.loads(line) for line in counts.read_text().splitlines()]
    # Two collator calls per step (predict, explain); bench_run times steps warmup+1..total.
    timed = calls[2 * args.warmup_steps: 2 * (args.warmup_steps + args.steps)]
    tokens = {k: sum(c[k] for c in timed) / args.steps for k in TOKEN_KEYS}
    side = "official (bf16)" if args.bf16 else "official"
    result["run_argv"] = run_argv
    if record:
        steps = same_start.official_losses(record, result.get("losses"))
        result.update(checkpoint=same_start.starting_checkpoint(record),
                      step_losses=[step["loss"] for step in steps],
                      step_task_losses=[step["task_losses"] for step in steps])
    result.update({"side": side, **{f"tokens_{k}": v for k, v in tokens.items()}})
    return result


def _torch_python(args) -> str:
    if args.torch_python:
        return args.torch_python
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        return sys.executable
    venv = Path(os.environ.get("VENV", "/tmp/dss-peer-venv"))
    if not (venv / "bin" / "python").exists():
        raise SystemExit("The reference needs torch: pass --torch-python, or --official first "
                         "(run_official.sh makes a venv with torch), or --skip-reference")
    return str(venv / "bin" / "python")


def run_reference(args, records: Path, spm: Path, workdir: Path) -> dict:
    out = workdir / "reference.json"
    command = [_torch_python(args), str(HERE / "torch_reference_train.py"),
               "--records", str(records), "--spm", str(spm),
               "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads),
               "--max-input-length", str(MAX_LENGTH), "--max-label-length", str(MAX_LENGTH),
               "--max-rationale-length", str(MAX_LENGTH), "--max-grad-norm", "1.0",
               "--lr", str(args.learning_rate),
               "--json-out", str(out)]
    result = _run_json(command, out)
    tokens = {
        "input_real": result["input_tokens"], "input_padded": result["padded_input_tokens"],
        "target_real": result["label_tokens"] + result["rationale_tokens"],
        "target_padded": result["padded_label_tokens"] + result["padded_rationale_tokens"],
    }
    return {"side": "reference", "examples_per_second": result["examples_per_second"],
            "seconds_per_step": result["seconds_per_step"],
            "peak_rss_mb": result["peak_rss_mb"],
            **{f"tokens_{k}": v for k, v in tokens.items()}}


def _run_json(command: list[str], json_path: Path) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:3])} failed:\n{done.stderr[-4000:]}")
    return json.loads(json_path.read_text())


def cpu_description() -> str:
    """The CPU's model and vector extensions (speed ratios differ between CPUs)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "CPU unknown"
    fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    fields = {key.strip(): value.strip() for key, value in fields.items()}
    flags = set(fields.get("flags", "").split())
    vectors = [name for name in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile")
               if name in flags]
    return (f"{fields.get('model name', 'CPU')} (family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}; {' '.join(vectors) or 'no AVX2'})")


def print_table(args, results: list[dict], load_before: float) -> None:
    """One line per side and round; ratios against the first side of the same round."""
    bases = {}
    for r in results:
        bases.setdefault(r["round"], r)
    print(f"\nbatch {args.batch_size}, {args.steps} timed steps after {args.warmup_steps} "
          f"warm-up steps, {args.threads} threads, {os.cpu_count()} CPU cores, "
          f"load average before: {load_before:.2f}\n{cpu_description()}\n")
    width = max(28, *(len(r["side"]) + 2 for r in results))
    print(f"{'side':{width}s}{'round':>6s}{'ex/s':>7s}{'s/step':>8s}{'median':>8s}"
          f"{'peak RSS MB':>12s}"
          f"{'input real/padded':>19s}{'target real/padded':>20s}"
          f"{'speed vs ' + results[0]['side'][:9]:>20s}{'RSS vs':>8s}")
    for r in results:
        base = bases[r["round"]]
        median = r.get("median_seconds_per_step")
        print(f"{r['side']:{width}s}{r['round']:6d}{r['examples_per_second']:7.2f}"
              f"{r['seconds_per_step']:8.3f}"
              + (f"{median:8.3f}" if median else f"{'':8s}") + f"{r['peak_rss_mb']:12.0f}"
              f"{r['tokens_input_real']:10.0f}/{r['tokens_input_padded']:<8.0f}"
              f"{r['tokens_target_real']:11.0f}/{r['tokens_target_padded']:<8.0f}"
              f"{r['examples_per_second'] / base['examples_per_second']:19.2f}x"
              f"{r['peak_rss_mb'] / base['peak_rss_mb']:7.2f}x")
    print("\ntokens are per step, both tasks, from the timed batches")
    if len(bases) > 1:
        print_round_summary(results, bases)


def print_round_summary(results: list[dict], bases: dict) -> None:
    """Each side's speed and RSS ratios over the rounds: mean and range."""
    ratios = {}
    for r in results:
        base = bases[r["round"]]
        if r is not base:
            ratios.setdefault(r["side"], []).append(
                (r["examples_per_second"] / base["examples_per_second"],
                 r["peak_rss_mb"] / base["peak_rss_mb"]))
    if not ratios:
        return
    print(f"\nover {len(bases)} rounds, against {results[0]['side']} of the same round:")
    width = max(28, *(len(side) + 1 for side in ratios))
    for side, pairs in ratios.items():
        speed, rss = zip(*pairs)
        print(f"  {side:{width}s}speed {sum(speed) / len(speed):.2f}x "
              f"({min(speed):.2f}-{max(speed):.2f}), peak RSS {sum(rss) / len(rss):.2f}x "
              f"({min(rss):.2f}-{max(rss):.2f}), {len(pairs)} runs")


def _sides(args, variants: list[str], records: Path, spm: Path, workdir: Path) -> list:
    """A function per side (in a round's order) that runs it and returns its result."""
    sides = []
    if args.official:
        sides.append(functools.partial(run_official, args, records, spm, workdir))
    if not args.skip_reference:
        sides.append(functools.partial(run_reference, args, records, spm, workdir))
    common = ["--records", str(records), "--spm", str(spm),
              "--batch-size", str(args.batch_size), "--steps", str(args.steps),
              "--warmup-steps", str(args.warmup_steps), "--threads", str(args.threads),
              "--learning-rate", str(args.learning_rate), *(["--bf16"] if args.bf16 else []),
              *(["--official-record", str(workdir / RECORD)] if args.same_start else [])]
    for variant in variants:
        out = workdir / f"keras-{variant}.json"
        sides.append(functools.partial(_run_json, [
            sys.executable, __file__, "--side", "keras", "--variant", variant, *common,
            "--json-out", str(out)], out))
    return sides


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side == "keras":
        result = run_keras(args)
        Path(args.json_out).write_text(json.dumps(result))
        return 0

    variants = [v for v in args.variants.split(",") if v]
    for variant in variants:
        if variant not in VARIANTS:
            raise SystemExit(f"Unknown variant {variant!r}; choose from {list(VARIANTS)}")
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1. Received: {args.rounds}")
    if args.bf16 and not args.skip_reference:
        raise SystemExit("--bf16: the reference (torch_reference_train.py) trains in float32 "
                         "only; add --skip-reference. Received: skip_reference=False")
    if args.same_start and not args.official:
        raise SystemExit("--same-start starts dss-keras from the checkpoint the official side "
                         "loads: give --official PATH. Received: official=None")
    moved = [v for v in variants if VARIANTS[v]["lm_head_std"]]
    if args.same_start and moved:
        raise SystemExit(f"--same-start: these variants start from other weights than the "
                         f"checkpoint's. Received: variants={moved}")
    if not (args.official or not args.skip_reference or variants):
        raise SystemExit("No side to run: give --official, --variants, or drop --skip-reference")
    load_before = os.getloadavg()[0]
    from dss_keras.quiet import quiet_tensorflow

    quiet_tensorflow()  # preparing the records imports TensorFlow here too
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        records, spm = prepare_inputs(args, workdir)
        results = []
        sides = _sides(args, variants, records, spm, workdir)
        try:
            for round_number in range(1, args.rounds + 1):
                for run_side in sides:
                    results.append({**run_side(), "round": round_number})
                    print(f"round {round_number}, {results[-1]['side']}: "
                          f"{results[-1]['seconds_per_step']:.3f} s/step", file=sys.stderr,
                          flush=True)
        finally:  # a side that fails keeps what the others measured
            if results:
                print_table(args, results, load_before)
                same_start.print_loss_curves(results)
                if args.json_out:
                    Path(args.json_out).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
