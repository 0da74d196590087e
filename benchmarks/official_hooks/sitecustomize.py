"""Counts the tokens of every batch the authors' collator builds (for train_throughput.py).

`train_throughput.py --official DIR` puts this folder on PYTHONPATH when it runs the authors'
`run.py` through `run_official.sh`, and names a file in $DSS_PEER_TOKEN_COUNTS. In that run's
training process (`tools/bench_run.py`) this wraps `DataCollatorForSeq2Seq.__call__`, which
their `TaskPrefixDataCollator` calls once per task and batch, and appends one JSON line per
call: padded and real (non-padding) input and label tokens. It changes nothing else; in any
other process it does nothing.
"""

import json
import os
import sys

_path = os.environ.get("DSS_PEER_TOKEN_COUNTS")
if _path and sys.argv and sys.argv[0].endswith("bench_run.py"):
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
