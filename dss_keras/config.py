"""The run configuration: every setting, its flag, default and allowed values.

`TrainConfig` is the one place where a setting of a run is spelled out. The
CLI, the recipes and the tuner build their flags from it (`add_flags`) and
read them back (`from_args`); the allowed values below are imported by every
module that checks them. The resolved config is saved as JSON in the run
directory.

This module imports nothing from TensorFlow or the rest of the package.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import typing
from typing import Any, Iterable

MODES = ("distill_step_by_step", "standard")
"""Both tasks (labels and rationales), or the label task only (the baselines)."""

TASKS = ("label", "rationale")
"""The two tasks, told apart by the input's prefix: `predict:` -> label, `explain:` -> rationale."""


def tasks_of(mode: str) -> tuple[str, ...]:
    """The tasks a mode trains: both for distilling step-by-step, the label alone otherwise.

    Examples:

    >>> tasks_of("distill_step_by_step"), tasks_of("standard")
    (('label', 'rationale'), ('label',))
    """
    if mode not in MODES:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    return TASKS if mode == "distill_step_by_step" else ("label",)

LABEL_SOURCES = ("gt", "llm")
"""Which label trains the label task: the human one or the teacher's."""

BENCHMARKS = ("esnli", "anli1", "cqa", "svamp")
"""The paper's benchmarks, read from the authors' release or TFDS."""

DATASETS = BENCHMARKS + ("word_problems",)
"""Named datasets `TrainConfig.data` accepts (`tfds:<benchmark>` too)."""

DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16")

EXPORT_PRECISIONS = ("float32", "bfloat16", "int8")
"""Weights and compute of an exported SavedModel (see `dss_keras.export_precision`)."""
JIT_COMPILE = ("auto", "true", "false")

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
"""`tf.distribute` strategies a run trains under (see `dss_keras.strategies`)."""

LR_SCHEDULES = ("constant", "linear")
EPSILON_PLACEMENTS = ("keras", "pytorch")
"""Where AdamW adds epsilon: before the bias correction (Keras), or after it (PyTorch)."""
"""Learning rate over the optimizer steps: constant, or linear decay to 0 (no warm-up)."""

SEARCHES = ("random", "bayesian", "grid")
"""KerasTuner searches of `dss-keras tune`."""

TUNED_FIELDS = ("mode", "alpha", "train_fraction", "learning_rate", "seed")
"""Fields a tuning trial sets; the others come from the base config."""

DEFAULT_ALPHAS = (0.1, 0.3, 0.5, 0.7, 0.9)
DEFAULT_TRAIN_FRACTIONS = (0.125, 0.25, 0.5, 1.0)

TINY_PRESET = "tiny"
TINY_ONLY_FIELDS = frozenset(
    {"vocabulary_size", "hidden_dim", "num_layers", "num_heads", "intermediate_dim", "dropout"}
)
"""Fields that shape the tiny model; a KerasHub preset brings its own."""

DEFAULT_VALIDATION_FRACTION = 0.1

_PATH_FIELDS = ("data_dir", "train_file", "validation_file", "test_file", "preset", "run_dir")

_POSITIVE_INTS = (
    "vocabulary_size", "hidden_dim", "num_layers", "num_heads", "intermediate_dim",
    "max_input_length", "max_label_length", "max_rationale_length", "batch_size", "steps",
    "eval_every", "gradient_accumulation_steps", "eval_batch_size", "examples_per_row",
)


def _field(default, help: str, choices: Iterable | None = None):
    metadata = {"help": help}
    if choices is not None:
        metadata["choices"] = tuple(choices)
    return dataclasses.field(default=default, metadata=metadata)


def is_benchmark_source(data: str | None) -> bool:
    """Whether `data` names a benchmark of the paper (`cqa` or `tfds:cqa`, ...)."""
    return data is not None and data.removeprefix("tfds:") in BENCHMARKS


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run.

    Every field is a flag of `dss-keras train` (`--run-dir` for `run_dir`).
    The resolved config is written to `<run_dir>/config.json`; an existing
    run directory resumes the run it holds, and only if its config matches.

    Data comes from exactly one of `data` (a named dataset) or `train_file`
    (records in JSONL or CSV); see `dss_keras.data.load`.

    Examples:

    >>> config = TrainConfig(train_file="train.jsonl", steps=100)
    >>> TrainConfig.from_dict(config.to_dict()) == config
    True
    >>> TrainConfig(data="svamp").metric  # a benchmark is scored with its own metric
    'svamp'
    >>> TrainConfig.from_dict({"stepz": 3})
    Traceback (most recent call last):
    ...
    ValueError: Unknown config field 'stepz' (did you mean 'steps'?).
    """

    # Data.
    data: str | None = _field(
        None, "a named dataset: word_problems[:N], a benchmark (esnli, anli1, cqa, svamp: the "
        "authors' release in --data-dir) or tfds:<benchmark>")
    data_dir: str | None = _field(
        None, "the release folder of a benchmark (holds <benchmark>/), or the TFDS builder's "
        "manual_dir (default: $DSS_DATA_DIR)")
    train_file: str | None = _field(None, "training records, .jsonl or .csv")
    validation_file: str | None = _field(None, "validation records (with --train-file)")
    test_file: str | None = _field(None, "test records (with --train-file)")
    label_source: str = _field("gt", "which label trains the label task", LABEL_SOURCES)
    train_fraction: float = _field(1.0, "share of the training records used, in (0, 1]")
    validation_fraction: float = _field(
        DEFAULT_VALIDATION_FRACTION,
        "share of train held out for validation when there is no validation split, in [0, 1)")
    # Model.
    preset: str = _field(
        TINY_PRESET, "a KerasHub preset or preset folder, or 'tiny' for a small T5 trained "
        "from scratch with a vocabulary trained on the training split")
    vocabulary_size: int = _field(1000, "pieces of the tiny model's vocabulary")
    hidden_dim: int = _field(64, "tiny model: width")
    num_layers: int = _field(2, "tiny model: encoder and decoder layers each")
    num_heads: int = _field(4, "tiny model: attention heads")
    intermediate_dim: int = _field(128, "tiny model: feed-forward width")
    dropout: float = _field(0.0, "tiny model: dropout rate")
    # Method.
    mode: str = _field("distill_step_by_step", "train the rationale task too, or not", MODES)
    alpha: float = _field(0.5, "weight of the label loss; the rationale loss gets 1 - alpha")
    label_prefix: str = _field("predict: ", "input prefix of the label task")
    rationale_prefix: str = _field("explain: ", "input prefix of the rationale task")
    max_input_length: int = _field(256, "longest input in tokens (longer ones are cut)")
    max_label_length: int = _field(16, "longest label in tokens, trained and generated")
    max_rationale_length: int = _field(128, "longest rationale in tokens")
    # Optimisation.
    batch_size: int = _field(
        32, "examples per step (each trains both tasks), over all replicas and workers")
    learning_rate: float = _field(1e-3, "AdamW learning rate (the peak one with a schedule)")
    lr_schedule: str = _field(
        "constant", "learning rate over the optimizer steps: constant, or 'linear' decay to 0 "
        "at the last step with no warm-up (Hugging Face Trainer's default)", LR_SCHEDULES)
    weight_decay: float = _field(0.0, "AdamW weight decay")
    adam_epsilon: float = _field(
        1e-7, "AdamW epsilon (Keras' default; the Hugging Face Trainer uses 1e-8)")
    adam_epsilon_placement: str = _field(
        "keras", "where AdamW adds epsilon: 'keras' (to sqrt(v), before the bias correction) "
        "or 'pytorch' (after it, as the authors' PyTorch AdamW)", EPSILON_PLACEMENTS)
    clip_global_norm: float = _field(
        0.0, "clip the gradient of the global batch to this global norm (0: off; the Hugging "
        "Face Trainer clips at 1.0)")
    steps: int = _field(
        1000, "training batches (optimizer steps divide them by gradient_accumulation_steps)")
    eval_every: int = _field(250, "steps between validations and backups")
    gradient_accumulation_steps: int = _field(1, "batches accumulated per optimizer step")
    dtype_policy: str = _field(
        "float32", "Keras dtype policy of the backbone (mixed_float16 adds dynamic loss "
        "scaling)", DTYPE_POLICIES)
    jit_compile: str = _field("auto", "compile the train step with XLA", JIT_COMPILE)
    rematerialize: bool = _field(
        False, "recompute each T5 layer in the backward pass instead of storing its "
        "activations: less tensor memory, about 1.2x the step time")
    examples_per_row: int = _field(
        4, "pack up to this many examples (both tasks') into one row, with attention masks "
        "that keep them apart, so that T5 does almost no work on padding (1: off; not under "
        "XLA)")
    strategy: str = _field(
        "default", "tf.distribute strategy: one device, 'mirrored' (the GPUs of this machine), "
        "'multi_worker' (workers named by TF_CONFIG) or 'tpu'; batch_size is the global batch",
        STRATEGIES)
    seed: int = _field(0, "seeds the weights, the data order and the training subset")
    # Evaluation.
    metric: str | None = _field(
        None, "how generated labels are scored: exact_match, equation, or a benchmark name "
        "(default: the benchmark's, else exact_match)")
    eval_batch_size: int = _field(64, "batch size of generation")
    # Where the run lives.
    run_dir: str = _field("runs/default", "the run directory (an existing one resumes)")

    def __post_init__(self):
        object.__setattr__(self, "jit_compile", str(self.jit_compile).lower())
        if self.metric is None:
            metric = self.data.removeprefix("tfds:") if is_benchmark_source(self.data) else None
            object.__setattr__(self, "metric", metric or "exact_match")
        for field in dataclasses.fields(self):
            choices = field.metadata.get("choices")
            if choices and getattr(self, field.name) not in choices:
                self._fail(field.name, "one of " + ", ".join(map(repr, choices)))
        ranges = {
            "alpha": (0.0 <= self.alpha <= 1.0, "in [0, 1]"),
            "train_fraction": (0.0 < self.train_fraction <= 1.0, "in (0, 1]"),
            "validation_fraction": (0.0 <= self.validation_fraction < 1.0, "in [0, 1)"),
            "dropout": (0.0 <= self.dropout < 1.0, "in [0, 1)"),
            "learning_rate": (self.learning_rate > 0, "above 0"),
            "weight_decay": (self.weight_decay >= 0, "at least 0"),
            "adam_epsilon": (self.adam_epsilon > 0, "above 0"),
            "clip_global_norm": (self.clip_global_norm >= 0, "at least 0 (0 turns clipping off)"),
            "rematerialize": (isinstance(self.rematerialize, bool), "true or false"),
        }
        for name in _POSITIVE_INTS:
            value = getattr(self, name)
            ranges[name] = (isinstance(value, int) and value >= 1, "a whole number, at least 1")
        for name, (ok, expected) in ranges.items():
            if not ok:
                self._fail(name, expected)
        self._check_data()

    def _fail(self, name: str, expected: str, why: str = ""):
        raise ValueError(
            f"`{name}` must be {expected}{why}. Received: {name}={getattr(self, name)!r}"
        )

    def _check_data(self) -> None:
        if self.data is not None and self.train_file is not None:
            raise ValueError(
                "Pass either `data` (a named dataset) or `train_file`, not both. Received: "
                f"data={self.data!r}, train_file={self.train_file!r}"
            )
        if self.data is not None:
            name = self.data.removeprefix("tfds:")
            known = name in BENCHMARKS if self.data.startswith("tfds:") else (
                name in DATASETS or name.startswith("word_problems:"))
            if not known:
                self._fail("data", f"one of {', '.join(DATASETS)} or tfds:<benchmark>")
            if name.startswith("word_problems:") and not name.split(":", 1)[1].isdigit():
                self._fail("data", "word_problems:N with N a whole number")
            for name in ("validation_file", "test_file"):
                if getattr(self, name) is not None:
                    self._fail(name, "unset", f" with data={self.data!r} (it brings its splits)")
        if not is_benchmark_source(self.data):
            if self.data_dir is not None:
                self._fail("data_dir", "unset", " unless `data` names a benchmark")
        elif self.validation_fraction != DEFAULT_VALIDATION_FRACTION:
            self._fail("validation_fraction", "left at its default",
                       f" with data={self.data!r} (a benchmark brings its validation split)")

    @property
    def jit_compile_value(self):
        """`"auto"`, `True` or `False`, as `keras.Model.compile` takes it."""
        return "auto" if self.jit_compile == "auto" else self.jit_compile == "true"

    @property
    def source(self) -> str | None:
        """What `dss_keras.data.load` reads: `data` or `train_file`."""
        return self.data if self.data is not None else self.train_file

    def resolved(self) -> "TrainConfig":
        """A copy whose paths are absolute and resolved: the form a run directory saves.

        `runs/base` and `./runs/base` then name the same run.
        """
        changes = {}
        for name in _PATH_FIELDS:
            value = getattr(self, name)
            if value and (name != "preset" or os.path.isdir(value)):
                changes[name] = os.path.realpath(os.path.expanduser(value))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Builds a config, rejecting unknown keys with a suggestion."""
        check_names(data)
        return cls(**data)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with `changes`; `metric` is derived again when `data` changes."""
        check_names(changes)
        if "data" in changes and "metric" not in changes:
            changes["metric"] = None
        return dataclasses.replace(self, **changes)

    def save(self, path: str | os.PathLike) -> None:
        from dss_keras.files import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainConfig":
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        # Configs saved before packing existed describe unpacked runs.
        data.setdefault("examples_per_row", 1)
        return cls.from_dict(data)

    # --- flags ------------------------------------------------------------------

    @classmethod
    def add_flags(
        cls,
        parser: argparse.ArgumentParser,
        *,
        exclude: Iterable[str] = (),
        defaults: dict[str, Any] | None = None,
        title: str = "run (TrainConfig fields)",
    ) -> None:
        """Adds one flag per field (`--run-dir` for `run_dir`) to `parser`.

        Flags default to "not given", so that `from_args` sees only what was
        typed; `defaults` only changes the help text.

        Args:
            parser: The parser (or subparser) to add to.
            exclude: Fields that get no flag.
            defaults: Defaults to show in the help instead of the field's.
            title: The title of the flags' group in `--help`.
        """
        group = parser.add_argument_group(title)
        hints = typing.get_type_hints(cls)
        defaults = defaults or {}
        for field in dataclasses.fields(cls):
            if field.name in exclude:
                continue
            hint = hints[field.name]
            kind = {int: int, float: float, bool: _boolean}.get(hint, str)
            default = defaults.get(field.name, field.default)
            help_text = field.metadata["help"] + f" (default: {default!r})"
            if field.name in TINY_ONLY_FIELDS:
                help_text += "; --preset tiny only"
            group.add_argument(
                "--" + field.name.replace("_", "-"), dest=field.name, type=kind,
                choices=field.metadata.get("choices"), default=argparse.SUPPRESS,
                help=help_text,
            )

    @classmethod
    def changes_from_args(cls, args: argparse.Namespace) -> dict[str, Any]:
        """The fields whose flags were given, by name."""
        names = {field.name for field in dataclasses.fields(cls)}
        return {name: value for name, value in vars(args).items() if name in names}

    @classmethod
    def from_args(
        cls, args: argparse.Namespace, base: "TrainConfig | None" = None
    ) -> "TrainConfig":
        """The config of parsed flags: `base` (the defaults) with the given flags.

        Raises:
            ValueError: for invalid values, or a flag that does not apply
                (e.g. a model-size flag with a KerasHub preset).
        """
        changes = cls.changes_from_args(args)
        config = (base or cls()).replace(**changes)
        check_applicable(changes, config)
        return config


def _boolean(text: str) -> bool:
    """A flag's true/false value (`true`, `false`, `1`, `0`, `yes`, `no`)."""
    value = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}.get(
        text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def check_names(values: dict[str, Any]) -> None:
    """Rejects keys that are not `TrainConfig` fields, suggesting the closest."""
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key in values:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"Unknown config field {key!r}{hint}.")


def check_applicable(changes: dict[str, Any], config: TrainConfig) -> None:
    """Rejects settings that `config` would ignore.

    Examples:

    >>> check_applicable({"hidden_dim": 128}, TrainConfig(preset="t5_1.1_base"))
    Traceback (most recent call last):
    ...
    ValueError: hidden_dim shape the tiny model only; preset 't5_1.1_base' brings its own.
    """
    if config.preset != TINY_PRESET:
        shaped = sorted(TINY_ONLY_FIELDS & set(changes))
        if shaped:
            raise ValueError(
                f"{', '.join(shaped)} shape the tiny model only; preset {config.preset!r} "
                "brings its own."
            )
    if config.mode == "standard" and "alpha" in changes:
        raise ValueError(
            "alpha weighs the label task against the rationale task; mode 'standard' "
            f"trains the label task only. Received: alpha={changes['alpha']!r}"
        )
