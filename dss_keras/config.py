"""The run configuration: one frozen dataclass, saved as JSON in the run directory."""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    The CLI's `dss-keras train` flags carry the same names. The resolved
    config is written to `<run_dir>/config.json`; an existing run directory
    resumes the run it holds, and only if its config matches.

    Examples:

    >>> config = TrainConfig(train_file="train.jsonl", steps=100)
    >>> TrainConfig.from_dict(config.to_dict()) == config
    True
    >>> TrainConfig.from_dict({"stepz": 3})
    Traceback (most recent call last):
    ...
    ValueError: Unknown config field 'stepz' (did you mean 'steps'?).
    """

    # Data.
    train_file: str | None = None
    validation_file: str | None = None
    test_file: str | None = None
    label_source: str = "gt"
    train_fraction: float = 1.0
    validation_fraction: float = 0.1
    # Model.
    preset: str = "tiny"
    vocabulary_size: int = 1000
    hidden_dim: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_dim: int = 128
    dropout: float = 0.0
    # Method.
    mode: str = "distill_step_by_step"
    alpha: float = 0.5
    label_prefix: str = "predict: "
    rationale_prefix: str = "explain: "
    max_input_length: int = 256
    max_label_length: int = 16
    max_rationale_length: int = 128
    # Optimisation.
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    steps: int = 1000
    eval_every: int = 250
    gradient_accumulation_steps: int = 1
    dtype_policy: str = "float32"
    jit_compile: str = "auto"
    seed: int = 0
    # Evaluation.
    metric: str = "exact_match"
    eval_batch_size: int = 64
    # Where the run lives.
    run_dir: str = "runs/default"

    def __post_init__(self):
        checks = [
            (self.label_source in ("gt", "llm"), "label_source", "'gt' or 'llm'"),
            (
                self.mode in ("distill_step_by_step", "standard"),
                "mode",
                "'distill_step_by_step' or 'standard'",
            ),
            (0.0 <= self.alpha <= 1.0, "alpha", "in [0, 1]"),
            (0.0 < self.train_fraction <= 1.0, "train_fraction", "in (0, 1]"),
            (0.0 <= self.validation_fraction < 1.0, "validation_fraction", "in [0, 1)"),
            (self.steps >= 1, "steps", "at least 1"),
            (self.eval_every >= 1, "eval_every", "at least 1"),
            (self.batch_size >= 1, "batch_size", "at least 1"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "at least 1"),
            (self.dtype_policy in ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16"),
             "dtype_policy", "'float32', 'mixed_float16', 'mixed_bfloat16' or 'bfloat16'"),
            (str(self.jit_compile) in ("auto", "True", "False", "true", "false"),
             "jit_compile", "'auto', true or false"),
        ]
        for ok, field, expected in checks:
            if not ok:
                raise ValueError(
                    f"`{field}` must be {expected}. Received: {field}={getattr(self, field)!r}"
                )

    @property
    def jit_compile_value(self):
        value = str(self.jit_compile).lower()
        return "auto" if value == "auto" else value == "true"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Builds a config, rejecting unknown keys with a suggestion."""
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"Unknown config field {key!r}{hint}.")
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        self.from_dict(changes)  # Reject unknown keys with the same message.
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> None:
        tmp = f"{os.fspath(path)}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        with open(path, encoding="utf-8") as f:
            return cls.from_dict(json.load(f))
