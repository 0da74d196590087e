"""Students from `transformers` T5 checkpoints, and back.

KerasHub loads T5 from its own presets only; this package reads the checkpoints that the
Hugging Face Hub and `transformers` training scripts hold (original T5, T5 v1.1, Flan-T5,
mT5) into a KerasHub `T5Seq2SeqLM` with the same weights and tokenizer, and writes a KerasHub
T5 (a trained student) back as such a checkpoint.

```
hf://google/flan-t5-base --hub.py--> local folder --reading.py--> keras_hub T5Seq2SeqLM
local transformers folder ----------------------------^              |
transformers checkpoint <--------------------------writing.py-------+
```

- `load_checkpoint(directory)`: a local checkpoint -> `T5Seq2SeqLM` (`reading.py`);
  `dss_keras.backbones.from_preset` calls it for `hf://` T5-family handles and local
  checkpoint folders (`checkpoint_directory`, `hub.py`).
- `save_checkpoint(seq2seq_lm, directory)`: the way back (`writing.py`);
  `export_for_transformers(model)` writes a trained `DistillStepByStep` to
  `saved_models/<name>/hf/` (`dss-keras export RUN_DIR --format hf`).
- `config.py` (which `config.json` fields are honoured, which refused), `layout.py` (where
  each tensor goes), `weights.py` (safetensors and PyTorch files), `tokenizer.py`
  (`spiece.model`).

Examples:

>>> import tempfile
>>> from dss_keras import testing
>>> student = testing.tiny_seq2seq_lm()
>>> path = save_checkpoint(student, tempfile.mkdtemp() + "/student")
>>> again = load_checkpoint(path)
>>> all(bool((a == b).all()) for a, b in zip(student.get_weights(), again.get_weights()))
True
"""

from dss_keras.hf_t5.hub import checkpoint_directory
from dss_keras.hf_t5.reading import load_checkpoint
from dss_keras.hf_t5.writing import export_for_transformers, save_checkpoint

__all__ = ["checkpoint_directory", "export_for_transformers", "load_checkpoint",
           "save_checkpoint"]
