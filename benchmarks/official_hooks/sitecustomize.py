"""Counts the tokens of every batch the authors' collator builds (for train_throughput.py).

`train_throughput.py --official DIR` puts this folder on PYTHONPATH when it runs the authors'
`run.py` through `run_official.sh`, and names a file in $DSS_PEER_TOKEN_COUNTS. In that run's
training process (`tools/bench_run.py`) this wraps `DataCollatorForSeq2Seq.__call__`, which
their `TaskPrefixDataCollator` calls once per task and batch, and appends one JSON line per
call: padded and real (non-padding) input and label tokens. With $DSS_PEER_RUN_ARGS set
(`--bf16` for `train_throughput.py --bf16`), it adds those flags of their `run.py` to the
command line, and it writes the command line to $DSS_PEER_ARGV_OUT when that is set. On a
machine without CUDA, Hugging Face's `TrainingArguments` refuses `bf16` unless `use_cpu` is
set, so there it sets `use_cpu` (the run is on the CPU either way, and the Trainer then
trains under torch's CPU autocast).

With $DSS_PEER_RECORD naming a folder (`train_throughput.py --same-start`), it records there
what dss-keras needs to train from the same start on the same batches:

- `checkpoint.json`: the folder their `T5ForConditionalGeneration.from_pretrained` loads,
  the loaded model's dropout rate, and whether its output layer is its embedding;
- `batches.jsonl`: one line per collator call (two per step: the label task's, then the
  rationale task's, of the same examples), the unpadded `input_ids` and `labels` of each
  example in the order their sampler handed them out;
- `losses.jsonl`: one line per step, the loss `Trainer.training_step` returns and the loss of
  each of the step's two model calls (label task, rationale task), at full precision.

It also sets their Trainer's `logging_steps` to 1, so that the losses their Trainer logs (4
decimals) reach `bench_run.py`'s statistics every step. It changes nothing else; in any other
process it does nothing.
"""

import json
import os
import shlex
import sys

_path = os.environ.get("DSS_PEER_TOKEN_COUNTS")
_record = os.environ.get("DSS_PEER_RECORD")
_in_their_run = bool(sys.argv) and sys.argv[0].endswith("bench_run.py")
if _in_their_run:
    sys.argv += shlex.split(os.environ.get("DSS_PEER_RUN_ARGS", ""))
    if os.environ.get("DSS_PEER_ARGV_OUT"):  # what their run.py is given, for the report
        with open(os.environ["DSS_PEER_ARGV_OUT"], "w", encoding="utf-8") as f:
            json.dump(sys.argv[1:], f)


def _append_line(path, value):
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(value) + "\n")


def _set_training_arguments():
    """Their `TrainingArguments`: on the CPU for `--bf16` without CUDA; logging every step."""
    import torch
    from transformers import TrainingArguments

    on_the_cpu = "--bf16" in sys.argv and not torch.cuda.is_available()
    _post_init = TrainingArguments.__post_init__

    def _post_init_here(self):
        if on_the_cpu:
            self.use_cpu = True
        if _record:
            self.logging_steps = 1
        _post_init(self)

    TrainingArguments.__post_init__ = _post_init_here


def _record_the_run(folder):
    """Writes `checkpoint.json`, `batches.jsonl` and `losses.jsonl` into `folder`."""
    from transformers import DataCollatorForSeq2Seq, T5ForConditionalGeneration, Trainer

    _from_pretrained = T5ForConditionalGeneration.from_pretrained.__func__
    _forward = T5ForConditionalGeneration.forward
    _collate = DataCollatorForSeq2Seq.__call__
    _training_step = Trainer.training_step
    task_losses = []

    def from_pretrained(cls, path, *args, **kwargs):
        model = _from_pretrained(cls, path, *args, **kwargs)
        head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
        with open(os.path.join(folder, "checkpoint.json"), "w", encoding="utf-8") as f:
            json.dump({"path": os.path.abspath(path), "dropout_rate": model.config.dropout_rate,
                       "head_is_embedding": head.weight is embedding.weight}, f)
        return model

    def forward(self, *args, **kwargs):
        outputs = _forward(self, *args, **kwargs)
        if self.training and outputs.loss is not None:
            task_losses.append(float(outputs.loss))
        return outputs

    def collate(self, features, return_tensors=None):
        _append_line(os.path.join(folder, "batches.jsonl"), {
            key: [[int(i) for i in feature[key]] for feature in features]
            for key in ("input_ids", "labels")})
        return _collate(self, features, return_tensors)

    def training_step(self, *args, **kwargs):
        loss = _training_step(self, *args, **kwargs)
        _append_line(os.path.join(folder, "losses.jsonl"),
                     {"loss": float(loss), "task_losses": list(task_losses)})
        task_losses.clear()
        return loss

    T5ForConditionalGeneration.from_pretrained = classmethod(from_pretrained)
    T5ForConditionalGeneration.forward = forward
    DataCollatorForSeq2Seq.__call__ = collate
    Trainer.training_step = training_step


if _in_their_run and ("--bf16" in sys.argv or _record):
    _set_training_arguments()

if _in_their_run and _record:
    _record_the_run(_record)

if _path and _in_their_run:
    from transformers import DataCollatorForSeq2Seq

    _collate = DataCollatorForSeq2Seq.__call__

    def _counting_call(self, features, return_tensors=None):
        batch = _collate(self, features, return_tensors)
        counts = {
            "input_padded": int(batch["input_ids"].numel()),
            "input_real": int(batch["attention_mask"].sum()),
            "target_padded": int(batch["labels"].numel()),
            "target_real": int((batch["labels"] != -100).sum()),
        }
        _append_line(_path, counts)
        return batch

    DataCollatorForSeq2Seq.__call__ = _counting_call
