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
trains under torch's CPU autocast). It changes nothing else; in any other process it does
nothing.
"""

import json
import os
import shlex
import sys

_path = os.environ.get("DSS_PEER_TOKEN_COUNTS")
_in_their_run = bool(sys.argv) and sys.argv[0].endswith("bench_run.py")
if _in_their_run:
    sys.argv += shlex.split(os.environ.get("DSS_PEER_RUN_ARGS", ""))
    if os.environ.get("DSS_PEER_ARGV_OUT"):  # what their run.py is given, for the report
        with open(os.environ["DSS_PEER_ARGV_OUT"], "w", encoding="utf-8") as f:
            json.dump(sys.argv[1:], f)

if _in_their_run and "--bf16" in sys.argv:
    import torch
    from transformers import TrainingArguments

    if not torch.cuda.is_available():
        _post_init = TrainingArguments.__post_init__

        def _on_the_cpu(self):
            self.use_cpu = True
            _post_init(self)

        TrainingArguments.__post_init__ = _on_the_cpu

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
        with open(_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(counts) + "\n")
        return batch

    DataCollatorForSeq2Seq.__call__ = _counting_call
