"""Training throughput of the PyTorch reference step of *Distilling step-by-step*.

Reproduces the training step of the authors' code (Hugging Face `Trainer` with a task-prefix
collator): per batch, one forward pass of `T5ForConditionalGeneration` for the label task
(`predict: ` + input -> label) and one for the rationale task (`explain: ` + input -> rationale),
both with `labels` whose padding is -100, then

    loss = alpha * label_loss + (1 - alpha) * rationale_loss

backward, `torch.optim.AdamW` step and `zero_grad`. The model is randomly initialised (nothing is
downloaded); its default shape is t5-v1_1-small (d_model 512, 8 + 8 layers, 6 heads, d_kv 64,
d_ff 1024, gated-gelu, vocab 32128, untied embeddings) with dropout 0.1 active (`model.train()`).
AdamW uses the Trainer's defaults (weight decay 0.0) at a constant learning rate; the Trainer's
gradient clipping at norm 1.0 is off unless `--max-grad-norm 1.0` is given.

Two CPU traps this script avoids or exposes:
- The untied `lm_head` is drawn with std d_model ** -0.5, so that the first logits have std ~1
  as a trained model's do. The Hugging Face random init (std 1.0) gives logits of std ~22, whose
  softmax gradients are largely denormal floats: the vocabulary-sized matmuls of the backward
  pass then run about 4 times slower (`--lm-head-init-std 1.0` to see it).
- With several threads on cores that other processes also use, OpenMP's default spin-waiting
  can make a step several times slower; `--omp-wait-policy passive` avoids that.

Inputs are a JSONL file of records `{"id", "input", "label", "rationale", "llm_label"}` and a
SentencePiece model (pad 0, eos 1, unk 2, no bos). Each sequence is `prefix + text` encoded with
`sentencepiece`, truncated so that it fits the maximum length together with the eos id 1 that
ends it. Batches are drawn in a seeded shuffled order and padded to their longest sequence
(pad id 0 for inputs, -100 for labels), as `DataCollatorForSeq2Seq` does.

Timing covers the steps after `--warmup-steps`, batch collation included; tokenisation is done
upfront and reported apart. Each step is also split into phases (collate, label forward,
rationale forward, backward, clip, optimizer step, zero_grad), by wall time and process CPU time.

Usage:

    python benchmarks/torch_reference_train.py --records records.jsonl --spm spm.model \\
        --batch-size 8 --warmup-steps 3 --steps 10 --threads 2 --json-out torch_train.json

Needs `torch`, `transformers` and `sentencepiece`; `psutil` is used when present.
"""

import argparse
import json
import os
import random
import resource
import sys
import time

import sentencepiece

# Imported by `main` once the flags are read: OpenMP reads OMP_WAIT_POLICY when torch loads it.
torch = None
transformers = None

PAD_ID = 0
EOS_ID = 1
LABEL_IGNORE_ID = -100
TASK_PREFIXES = {"label": "predict: ", "rationale": "explain: "}
PHASES = ("collate", "label_forward", "rationale_forward", "backward", "clip", "optimizer_step",
          "zero_grad")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", required=True, help="JSONL file, one record per line")
    p.add_argument("--spm", required=True, help="SentencePiece .model file (pad 0, eos 1, unk 2)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup-steps", type=int, default=3, help="untimed steps run first")
    p.add_argument("--max-input-length", type=int, default=256)
    p.add_argument("--max-label-length", type=int, default=16)
    p.add_argument("--max-rationale-length", type=int, default=128)
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the label loss")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--weight-decay", type=float, default=0.0,
                   help="AdamW weight decay (0.0, the Trainer's default)")
    p.add_argument("--max-grad-norm", type=float, default=0.0,
                   help="clip the gradient norm to this before the step; 0 disables "
                        "(the reference Trainer clips at 1.0)")
    p.add_argument("--adamw-impl", choices=("default", "foreach", "fused"), default="default",
                   help="torch.optim.AdamW implementation (default: torch's choice for CPU)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="torch.set_num_threads (default: os.cpu_count())")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", help="write the results here as JSON")
    p.add_argument("--verbose", action="store_true", help="print each step's loss and time")
    shape = p.add_argument_group("model shape (default: t5-v1_1-small)")
    shape.add_argument("--d-model", type=int, default=512)
    shape.add_argument("--num-layers", type=int, default=8, help="encoder layers")
    shape.add_argument("--num-decoder-layers", type=int, default=8)
    shape.add_argument("--num-heads", type=int, default=6)
    shape.add_argument("--d-kv", type=int, default=64)
    shape.add_argument("--d-ff", type=int, default=1024)
    shape.add_argument("--vocab-size", type=int, default=32128)
    shape.add_argument("--dropout", type=float, default=0.1, help="T5Config.dropout_rate")
    shape.add_argument("--feed-forward-proj", default="gated-gelu")
    shape.add_argument("--lm-head-init-std", type=float, default=None,
                       help="std of the random lm_head weights (default: d_model ** -0.5, which "
                            "gives logits of std ~1 like a trained model; the Hugging Face init "
                            "of 1.0 gives logits of std ~sqrt(d_model), whose softmax gradients "
                            "are largely denormal floats and slow CPU matmuls down many times)")
    p.add_argument("--omp-wait-policy", choices=("passive", "active"),
                   help="set OMP_WAIT_POLICY before torch is imported (default: inherit). On a "
                        "machine where other processes compete for the cores, 'passive' keeps "
                        "the OpenMP threads from spinning and can be several times faster")
    p.add_argument("--flush-denormal", action="store_true",
                   help="torch.set_flush_denormal(True) (sets the calling thread only)")
    args = p.parse_args(argv)
    for name in ("batch_size", "steps", "threads", "max_input_length", "max_label_length",
                 "max_rationale_length"):
        value = getattr(args, name)
        if value < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1. Received: {value}")
    if args.warmup_steps < 0:
        p.error(f"--warmup-steps must be at least 0. Received: {args.warmup_steps}")
    return args


def read_records(path):
    """Returns the records of a JSONL file, checking the fields the benchmark reads."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            for field in ("input", "label", "rationale"):
                value = record.get(field)
                if not isinstance(value, str):
                    raise ValueError(f'{path}:{line_no}: field "{field}": expected a string, '
                                     f"received {json.dumps(value)}")
            records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def batch_order(num_records, batch_size, num_batches, seed):
    """Record indices of each batch: seeded reshuffles of all records, partial batches dropped."""
    if num_records < batch_size:
        raise ValueError(f"--batch-size is larger than the number of records ({num_records}). "
                         f"Received: batch_size={batch_size}")
    rng = random.Random(seed)
    batches = []
    while len(batches) < num_batches:
        order = list(range(num_records))
        rng.shuffle(order)
        for start in range(0, num_records - batch_size + 1, batch_size):
            batches.append(order[start:start + batch_size])
    return batches[:num_batches]


def encode(sp, text, max_length):
    return sp.encode(text)[:max_length - 1] + [EOS_ID]


def tokenize(sp, record, args):
    """The token ids of one record for both tasks."""
    return {
        "label_input": encode(sp, TASK_PREFIXES["label"] + record["input"], args.max_input_length),
        "rationale_input": encode(sp, TASK_PREFIXES["rationale"] + record["input"],
                                  args.max_input_length),
        "label": encode(sp, record["label"], args.max_label_length),
        "rationale": encode(sp, record["rationale"], args.max_rationale_length),
    }


def pad(sequences, value):
    out = torch.full((len(sequences), max(len(s) for s in sequences)), value, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def collate(examples):
    """Model keyword arguments of both tasks, each padded to its longest sequence."""
    batch = {}
    for task in ("label", "rationale"):
        input_ids = pad([e[f"{task}_input"] for e in examples], PAD_ID)
        batch[task] = {"input_ids": input_ids,
                       "attention_mask": (input_ids != PAD_ID).long(),
                       "labels": pad([e[task] for e in examples], LABEL_IGNORE_ID)}
    return batch


def lm_head_init_std(args):
    return args.d_model ** -0.5 if args.lm_head_init_std is None else args.lm_head_init_std


def build_model(args):
    config = transformers.T5Config(
        vocab_size=args.vocab_size, d_model=args.d_model, d_kv=args.d_kv, d_ff=args.d_ff,
        num_layers=args.num_layers, num_decoder_layers=args.num_decoder_layers,
        num_heads=args.num_heads, dropout_rate=args.dropout,
        feed_forward_proj=args.feed_forward_proj, tie_word_embeddings=False,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
    model = transformers.T5ForConditionalGeneration(config)
    # transformers 5 keeps `tie_word_embeddings=False` only as "do not scale the decoder output"
    # and ties `lm_head` to `shared` anyway; t5-v1_1 has its own head, so give it one back.
    weight = torch.empty_like(model.shared.weight)
    torch.nn.init.normal_(weight, mean=0.0, std=lm_head_init_std(args))
    model.lm_head.weight = torch.nn.Parameter(weight)
    if getattr(config, "scale_decoder_outputs", False):
        raise RuntimeError("T5Config scales the decoder output, unlike t5-v1_1")
    model.train()
    return model


def build_optimizer(model, args):
    kwargs = {"lr": args.lr, "weight_decay": args.weight_decay}
    if args.adamw_impl != "default":
        kwargs[args.adamw_impl] = True
    return torch.optim.AdamW(model.parameters(), **kwargs)


def train_step(model, optimizer, examples, alpha, max_grad_norm, clock):
    """One reference step; `clock(phase)` is called at the end of each phase."""
    batch = collate(examples)
    clock("collate")
    label_loss = model(**batch["label"]).loss
    clock("label_forward")
    rationale_loss = model(**batch["rationale"]).loss
    clock("rationale_forward")
    loss = alpha * label_loss + (1.0 - alpha) * rationale_loss
    loss.backward()
    clock("backward")
    if max_grad_norm > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
    clock("clip")
    optimizer.step()
    clock("optimizer_step")
    optimizer.zero_grad(set_to_none=True)
    clock("zero_grad")
    return float(loss.detach()), float(label_loss.detach()), float(rationale_loss.detach())


class PhaseClock:
    """Adds up wall and process CPU seconds per phase between calls."""

    def __init__(self):
        self.wall = dict.fromkeys(PHASES, 0.0)
        self.cpu = dict.fromkeys(PHASES, 0.0)
        self.restart()

    def restart(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def __call__(self, phase):
        wall, cpu = time.perf_counter(), time.process_time()
        self.wall[phase] += wall - self._wall
        self.cpu[phase] += cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def memory_mb():
    """Peak RSS from getrusage (and /proc or psutil where available), in MiB."""
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if sys.platform == "darwin":  # ru_maxrss is in bytes there, KiB on Linux
        out["peak_rss_mb"] /= 1024.0
    try:
        import psutil
        out["rss_mb_psutil"] = psutil.Process().memory_info().rss / 2**20
    except ImportError:
        pass
    return out


def token_counts(tokenized, batches):
    """Per step averages of non-padding and padded token counts over the given batches."""
    sums = dict.fromkeys(("input_tokens", "label_tokens", "rationale_tokens",
                          "padded_input_tokens", "padded_label_tokens",
                          "padded_rationale_tokens"), 0)
    for batch in batches:
        examples = [tokenized[i] for i in batch]
        for key, fields in (("input", ("label_input", "rationale_input")),
                            ("label", ("label",)), ("rationale", ("rationale",))):
            for field in fields:
                lengths = [len(e[field]) for e in examples]
                sums[f"{key}_tokens"] += sum(lengths)
                sums[f"padded_{key}_tokens"] += max(lengths) * len(lengths)
    return {k: v / len(batches) for k, v in sums.items()}


def run(args):
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise RuntimeError("this CPU cannot flush denormals")
    sp = sentencepiece.SentencePieceProcessor(model_file=args.spm)
    if sp.pad_id() != PAD_ID or sp.eos_id() != EOS_ID:
        raise ValueError(f"{args.spm}: expected pad id 0 and eos id 1. "
                         f"Received: pad_id={sp.pad_id()}, eos_id={sp.eos_id()}")
    if sp.get_piece_size() > args.vocab_size:
        raise ValueError(f"--vocab-size is smaller than the SentencePiece vocabulary "
                         f"({sp.get_piece_size()}). Received: vocab_size={args.vocab_size}")
    records = read_records(args.records)
    batches = batch_order(len(records), args.batch_size, args.warmup_steps + args.steps, args.seed)

    start = time.perf_counter()
    tokenized = {i: tokenize(sp, records[i], args) for b in batches for i in b}
    tokenize_seconds = time.perf_counter() - start

    model = build_model(args)
    optimizer = build_optimizer(model, args)
    rss_after_model = memory_mb()["peak_rss_mb"]

    clock = PhaseClock()
    losses = []
    for step, batch in enumerate(batches):
        if step == args.warmup_steps:
            clock = PhaseClock()  # drop the warmup steps' phase times
            timed_start = time.perf_counter()
        step_start = time.perf_counter()
        clock.restart()
        losses.append(train_step(model, optimizer, [tokenized[i] for i in batch], args.alpha,
                                 args.max_grad_norm, clock))
        if args.verbose:
            tag = " (warmup)" if step < args.warmup_steps else ""
            print(f"step {step + 1}/{len(batches)}{tag}: loss {losses[-1][0]:.4f}, "
                  f"{time.perf_counter() - step_start:.3f}s", file=sys.stderr, flush=True)
    seconds = time.perf_counter() - timed_start
    return summarize(args, model, tokenized, batches, losses, clock, seconds, tokenize_seconds,
                     rss_after_model)


def summarize(args, model, tokenized, batches, losses, clock, seconds, tokenize_seconds,
              rss_after_model):
    tokens = token_counts(tokenized, batches[args.warmup_steps:])
    seconds_per_step = seconds / args.steps
    result = {
        "examples_per_second": args.batch_size * args.steps / seconds,
        "seconds_per_step": seconds_per_step,
        "tokens_per_second": (tokens["input_tokens"] + tokens["label_tokens"]
                              + tokens["rationale_tokens"]) / seconds_per_step,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "batch_size": args.batch_size,
        "seconds": seconds,
        "tokenize_seconds": tokenize_seconds,
        **tokens,
        **memory_mb(),
        "rss_after_model_mb": rss_after_model,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "phase_seconds_per_step": {k: v / args.steps for k, v in clock.wall.items()},
        "phase_cpu_seconds_per_step": {k: v / args.steps for k, v in clock.cpu.items()},
        "first_loss": losses[0][0],
        "last_loss": losses[-1][0],
        "last_label_loss": losses[-1][1],
        "last_rationale_loss": losses[-1][2],
        "parameters": sum(p.numel() for p in model.parameters()),
        "alpha": args.alpha,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "adamw_impl": args.adamw_impl,
        "dropout": args.dropout,
        "lm_head_init_std": lm_head_init_std(args),
        "flush_denormal": args.flush_denormal,
        "seed": args.seed,
        "max_input_length": args.max_input_length,
        "max_label_length": args.max_label_length,
        "max_rationale_length": args.max_rationale_length,
        "model_config": {k: getattr(args, k) for k in (
            "d_model", "num_layers", "num_decoder_layers", "num_heads", "d_kv", "d_ff",
            "vocab_size", "feed_forward_proj")},
    }
    return result


def summary_line(r):
    phases = ", ".join(f"{k} {v:.3f}" for k, v in r["phase_seconds_per_step"].items())
    return (f"torch {r['torch_version']} reference step, {r['threads']} threads, batch "
            f"{r['batch_size']} x {r['steps']} steps (+{r['warmup_steps']} warmup): "
            f"{r['examples_per_second']:.2f} examples/s, {r['seconds_per_step']:.3f} s/step, "
            f"{r['tokens_per_second']:.0f} tokens/s, peak RSS {r['peak_rss_mb']:.0f} MiB "
            f"[s/step: {phases}]")


def import_torch(omp_wait_policy):
    global torch, transformers
    if omp_wait_policy:
        if "torch" in sys.modules:
            raise RuntimeError("--omp-wait-policy must be applied before torch is imported")
        os.environ["OMP_WAIT_POLICY"] = omp_wait_policy.upper()
    import torch
    import transformers


def main(argv=None):
    args = parse_args(argv)
    import_torch(args.omp_wait_policy)
    result = run(args)
    print(summary_line(result), flush=True)
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
