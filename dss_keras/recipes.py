"""Benchmark recipes: the paper's experiment for one benchmark, as a declarative config.

A recipe file (`recipes/cqa.py`, ...) is a `get_config()` returning a
`BenchmarkRecipe`, plus one call; its docstring holds the commands that run it:

```python
def get_config():
    return recipes.BenchmarkRecipe("cqa", tiny={"vocabulary_size": 3000})

if __name__ == "__main__":
    sys.exit(recipes.main(get_config(), description=__doc__))
```

A run:

1. loads train, valid and test: from the authors' release (`--data-dir`, see
   `dss_keras.data.official`) or from the `dss_<name>` TFDS builders
   (`--tfds`, `--tfds-manual-dir`); cqa and svamp carve valid out of train
   (10%, seed 0), esnli and anli1 use their own valid split;
2. prints the teacher's label accuracy on the training split;
3. trains with `dss_keras.training.train` (validation every `eval_every`
   steps, the benchmark's metric), then evaluates on test;
4. writes `<run_dir>/results.json` (config, teacher report, validation and
   test accuracy, wall time);
5. exports a label-only SavedModel to `saved_models/<benchmark>-<mode>/<version>/`
   when `dss_keras.export.export_for_serving` is available (`--no-export`
   skips it).

Settings resolve in this order, later ones winning:

| source                         | holds                                                        |
|--------------------------------|--------------------------------------------------------------|
| `PAPER_SETTINGS`               | the paper's settings (T5 v1.1 base, lr 5e-5, batch 64, ...)  |
| `recipe.settings`              | a benchmark's changes to them (none in the paper)            |
| `TINY_SETTINGS`, `recipe.tiny` | with `preset="tiny"`: a small T5 trained from scratch        |
| flags / `config(**changes)`    | the command line                                             |

Token budgets of the paper's settings: inputs are cut at 1024 tokens; labels
are generated (and trained) up to 64 tokens, the paper's generation length;
rationales train up to 256 tokens, the rationale target length of the
reference code. The longest rationales of the CQA and SVAMP release are under
90 words (350 characters), so 256 cuts none of them while bounding the
rationale task's cost on the NLI benchmarks.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import time
import types
import typing
from typing import Any, Callable, Mapping, Sequence

from dss_keras.config import TrainConfig
from dss_keras.data import official, splits
from dss_keras.data.records import Record

logger = logging.getLogger(__name__)

PAPER_SETTINGS: Mapping[str, Any] = types.MappingProxyType(
    {
        "preset": "t5_1.1_base",
        "mode": "distill_step_by_step",
        "label_source": "gt",
        "alpha": 0.5,
        "learning_rate": 5e-5,
        "weight_decay": 0.0,
        "batch_size": 64,
        "gradient_accumulation_steps": 1,
        "max_input_length": 1024,
        "max_label_length": 64,
        "max_rationale_length": 256,
        "steps": 10_000,
        "eval_every": 250,
        "eval_batch_size": 64,
        "train_fraction": 1.0,
        "seed": 0,
    }
)
"""The paper's settings (T5 v1.1 base, AdamW), shared by the four benchmarks."""

TINY_SETTINGS: Mapping[str, Any] = types.MappingProxyType(
    {
        "vocabulary_size": 3000,
        "hidden_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_dim": 128,
        "max_input_length": 256,
        "max_label_length": 32,
        "max_rationale_length": 128,
        "learning_rate": 1e-3,
        "batch_size": 32,
        "steps": 1000,
        "eval_every": 250,
    }
)
"""A T5 of 0.3M-0.6M parameters trained from scratch, for CPU runs (`preset="tiny"`).

A model trained from scratch needs a far larger learning rate than a
pretrained one. CQA and SVAMP inputs are under 80 words, well inside 256
tokens; their labels fit 16 (CQA) and 32 (SVAMP, digits split) tokens.
"""

TINY_ONLY_FIELDS = frozenset(
    {"vocabulary_size", "hidden_dim", "num_layers", "num_heads", "intermediate_dim", "dropout"}
)
"""Fields that shape the tiny model; a KerasHub preset brings its own."""

DATA_FIELDS = frozenset(
    {"train_file", "validation_file", "test_file", "validation_fraction", "metric"}
)
"""Fields a recipe sets itself: the data comes from the benchmark, the metric is its own."""

RESULTS_FILE = "results.json"


def _check_fields(settings: Mapping[str, Any], what: str) -> None:
    # `replace` rejects unknown names with a suggestion.
    TrainConfig().replace(**{k: v for k, v in settings.items() if k not in DATA_FIELDS})
    fixed = sorted(set(settings) & DATA_FIELDS)
    if fixed:
        raise ValueError(
            f"A recipe sets {', '.join(fixed)} itself; they cannot be changed in "
            f"`{what}`. Received: {what}={dict(settings)!r}"
        )


@dataclasses.dataclass(frozen=True)
class BenchmarkRecipe:
    """The settings of one benchmark's experiment.

    Args:
        benchmark: `"cqa"`, `"svamp"`, `"esnli"` or `"anli1"`; also the
            metric (`dss_keras.metrics.score_predictions`).
        settings: Changes to `PAPER_SETTINGS` for this benchmark.
        tiny: Changes to `TINY_SETTINGS` for this benchmark, applied with
            `preset="tiny"` only.

    Raises:
        ValueError: for an unknown benchmark, or settings that are not
            `TrainConfig` fields or have invalid values.

    Examples:

    >>> recipe = BenchmarkRecipe("svamp")
    >>> config = recipe.config()
    >>> config.preset, config.learning_rate, config.batch_size, config.steps, config.metric
    ('t5_1.1_base', 5e-05, 64, 10000, 'svamp')
    >>> tiny = recipe.config(preset="tiny", steps=300)
    >>> tiny.learning_rate, tiny.max_input_length, tiny.steps, tiny.run_dir
    (0.001, 256, 300, 'runs/svamp-distill_step_by_step')
    >>> BenchmarkRecipe("squad")
    Traceback (most recent call last):
    ...
    ValueError: Unknown benchmark; expected one of esnli, anli1, cqa, svamp. Received: benchmark='squad'
    >>> BenchmarkRecipe("cqa", tiny={"hiden_dim": 32})
    Traceback (most recent call last):
    ...
    ValueError: Unknown config field 'hiden_dim' (did you mean 'hidden_dim'?).
    """

    benchmark: str
    settings: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tiny: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.benchmark not in official.BENCHMARKS:
            raise ValueError(
                f"Unknown benchmark; expected one of {', '.join(official.BENCHMARKS)}. "
                f"Received: benchmark={self.benchmark!r}"
            )
        for name in ("settings", "tiny"):
            value = types.MappingProxyType(dict(getattr(self, name)))
            _check_fields(value, name)
            object.__setattr__(self, name, value)
        self.config()  # Invalid values fail here, not at the end of a flag parse.

    def defaults(self, preset: str | None = None) -> dict[str, Any]:
        """The resolved settings for `preset` (the recipe's own when `None`)."""
        values = {**PAPER_SETTINGS, **self.settings}
        if (preset or values["preset"]) == "tiny":
            values.update(TINY_SETTINGS)
            values.update(self.tiny)
        if preset is not None:
            values["preset"] = preset
        return values

    def default_run_dir(self, mode: str) -> str:
        return os.path.join("runs", f"{self.benchmark}-{mode}")

    def config(self, **changes) -> TrainConfig:
        """The run's `TrainConfig`: the recipe's settings, then `changes`.

        `run_dir` defaults to `runs/<benchmark>-<mode>`.
        """
        _check_fields(changes, "changes")
        values = self.defaults(changes.get("preset"))
        values.update(changes)
        values.setdefault("run_dir", self.default_run_dir(values["mode"]))
        values["metric"] = self.benchmark
        return TrainConfig.from_dict(values)


@dataclasses.dataclass(frozen=True)
class DataSource:
    """Where a recipe reads its benchmark from: the release files or TFDS.

    Args:
        data_dir: The release folder that holds `<benchmark>/` (see
            `dss_keras.data.official`).
        tfds: Read the `dss_<benchmark>` TFDS builder instead.
        tfds_manual_dir: The builder's `manual_dir` (the release folder), for
            its first preparation.
        tfds_data_dir: TFDS's data directory (TFDS's default when `None`).
    """

    data_dir: str | None = None
    tfds: bool = False
    tfds_manual_dir: str | None = None
    tfds_data_dir: str | None = None

    def __post_init__(self):
        if self.tfds == (self.data_dir is not None):
            raise ValueError(
                "Pass either a release folder (`data_dir`) or `tfds=True`. Received: "
                f"data_dir={self.data_dir!r}, tfds={self.tfds!r}"
            )
        if not self.tfds and (self.tfds_manual_dir or self.tfds_data_dir):
            raise ValueError(
                "`tfds_manual_dir` and `tfds_data_dir` need `tfds=True`. Received: "
                f"tfds_manual_dir={self.tfds_manual_dir!r}, tfds_data_dir={self.tfds_data_dir!r}"
            )

    def describe(self) -> dict[str, Any]:
        if self.tfds:
            return {"tfds": True, "tfds_manual_dir": self.tfds_manual_dir,
                    "tfds_data_dir": self.tfds_data_dir}
        return {"data_dir": self.data_dir}

    def load(self, benchmark: str) -> dict[str, list[Record]]:
        """The `train`, `valid` and `test` records of `benchmark` (train in full).

        Records come ordered by id: TFDS stores them shuffled, and one order
        for both sources makes a seed give the same run from either.
        """
        if self.tfds:
            loaded = _load_tfds(benchmark, self.tfds_manual_dir, self.tfds_data_dir)
        else:
            loaded = {
                split: official.load_benchmark(benchmark, self.data_dir, split)
                for split in ("train", "valid", "test")
            }
        return {split: sorted(records, key=lambda r: r.id) for split, records in loaded.items()}


def _load_tfds(benchmark: str, manual_dir: str | None, data_dir: str | None):
    import tensorflow_datasets as tfds

    import dss_keras.data.tfds  # noqa: F401  (registers the builders)

    builder = tfds.builder(f"dss_{benchmark}", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    loaded = {}
    for split in ("train", "valid", "test"):
        records = []
        for example in builder.as_dataset(split=split).as_numpy_iterator():
            text = {k: v.decode("utf-8") for k, v in example.items()}
            records.append(
                Record(text["id"], text["input"], text["label"],
                       text["rationale"] or None, text["llm_label"] or None)
            )
        loaded[split] = records
    return loaded


def _exporter() -> tuple[Callable | None, str | None]:
    """`dss_keras.export.export_for_serving`, or `None` and why not."""
    try:
        from dss_keras.export import export_for_serving
    except ImportError as error:
        return None, f"dss_keras.export.export_for_serving is not available ({error})"
    return export_for_serving, None


def _write_json(data: dict, path: str) -> None:
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(path + ".tmp", path)


def _previous_export(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        export = json.load(f).get("export") or {}
    saved = export.get("path")
    return saved if saved and os.path.isdir(saved) else None


def run_recipe(
    recipe: BenchmarkRecipe,
    config: TrainConfig,
    source: DataSource,
    *,
    export: bool = True,
    export_dir: str = "saved_models",
    verbose: str | int = "auto",
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Loads the benchmark, trains, evaluates, writes `results.json`, exports.

    Args:
        recipe: The benchmark's recipe.
        config: The run's config (usually `recipe.config(...)`); its metric
            must be the benchmark.
        source: Where the data comes from.
        export: Export a label-only SavedModel to
            `<export_dir>/<benchmark>-<mode>/<version>/` when
            `dss_keras.export` is available. A finished run that was
            exported already is not exported again.
        export_dir: The parent of the exports.
        verbose: Keras progress bar setting.
        echo: Where the reports go (`print` for a command line); the logger
            by default.

    Returns:
        The content of `<run_dir>/results.json`.
    """
    from dss_keras.training import train

    echo = echo or logger.info
    if config.metric != recipe.benchmark:
        raise ValueError(
            f"The {recipe.benchmark} recipe scores with its own metric. "
            f"Received: metric={config.metric!r}"
        )
    start = time.perf_counter()
    data = source.load(recipe.benchmark)
    teacher = teacher_reports(recipe.benchmark, data["train"], config)
    echo(f"Data: {len(data['train'])} train ({teacher[-1].num_records} used), "
         f"{len(data['valid'])} valid, {len(data['test'])} test")
    for report in teacher:
        echo(f"Teacher: {report}")

    # `train` takes `config.train_fraction` of the records itself.
    result = train(config, data["train"], data["valid"], data["test"], verbose=verbose)
    results = _results(recipe, config, source, data, teacher, result.metrics)
    results_path = os.path.join(config.run_dir, RESULTS_FILE)
    previous = _previous_export(results_path)
    results["export"] = {"path": previous} if previous else None
    results["wall_seconds"] = time.perf_counter() - start
    _write_json(results, results_path)
    echo(summary(results))
    if export and not previous:
        results["export"] = _export(result.model, recipe, config, export_dir, echo)
        results["wall_seconds"] = time.perf_counter() - start
        _write_json(results, results_path)
    return results


def teacher_reports(
    benchmark: str, train_records: list[Record], config: TrainConfig
) -> list[official.TeacherReport]:
    """The teacher's report on the training split, and on the fraction used if smaller."""
    reports = [official.teacher_report(benchmark, train_records, "train")]
    used = splits.take_fraction(train_records, config.train_fraction, seed=config.seed)
    if len(used) < len(train_records):
        split = f"train ({config.train_fraction:g} used)"
        reports.append(official.teacher_report(benchmark, used, split))
    return reports


def _results(recipe, config, source, data, teacher, metrics) -> dict[str, Any]:
    validation, test = metrics.get("validation"), metrics.get("test")
    return {
        "benchmark": recipe.benchmark,
        "config": config.to_dict(),
        "data": {
            **source.describe(),
            "num_train": len(data["train"]),
            "num_train_used": teacher[-1].num_records,
            "num_valid": len(data["valid"]),
            "num_test": len(data["test"]),
        },
        "pipeline": metrics.get("data"),
        "teacher": {
            "train": dataclasses.asdict(teacher[0]),
            **({"train_subset": dataclasses.asdict(teacher[1])} if len(teacher) > 1 else {}),
        },
        "validation": validation,
        "test": test,
        "validation_accuracy": validation["accuracy"] if validation else None,
        "test_accuracy": test["accuracy"] if test else None,
        "steps_trained": metrics.get("steps_trained"),
        "train_seconds": metrics.get("train_seconds"),
    }


def _export(model, recipe, config, export_dir, echo) -> dict[str, str]:
    """Exports the model if `dss_keras.export` is there; says where, or why not."""
    export_for_serving, reason = _exporter()
    if export_for_serving is None:
        echo(f"Export skipped: {reason}")
        return {"skipped": reason}
    target = os.path.join(export_dir, f"{recipe.benchmark}-{config.mode}")
    path = export_for_serving(model, target)
    echo(f"Exported a label-only SavedModel to {path}")
    return {"path": path}


def summary(results: Mapping[str, Any]) -> str:
    """One line: benchmark, mode, validation and test accuracy."""
    def figure(split):
        part = results.get(split)
        if not part:
            return f"{split}: none"
        return f"{split} accuracy {part['accuracy']:.4f} ({part['num_examples']} examples)"

    config = results["config"]
    return (
        f"{results['benchmark']} {config['mode']} (labels: {config['label_source']}, "
        f"preset {config['preset']}, {results['steps_trained']} steps): "
        f"{figure('validation')}, {figure('test')}"
    )


# --- the command line -------------------------------------------------------

_FLAG_CHOICES = {
    "mode": ("distill_step_by_step", "standard"),
    "label_source": ("gt", "llm"),
    "dtype_policy": ("float32", "mixed_float16", "mixed_bfloat16", "bfloat16"),
    "jit_compile": ("auto", "true", "false"),
}


def build_parser(
    recipe: BenchmarkRecipe, description: str | None = None
) -> argparse.ArgumentParser:
    """The recipe's flags: `TrainConfig` fields by name, plus data and export flags."""
    parser = argparse.ArgumentParser(
        description=description or f"The {recipe.benchmark} experiment of Distilling step-by-step",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir",
                      help="release folder holding <name>/<name>_<split>.json and "
                      "<name>/llm/ (default: $DSS_DATA_DIR)")
    data.add_argument("--tfds", action="store_true",
                      help=f"read the dss_{recipe.benchmark} TFDS builder instead")
    data.add_argument("--tfds-manual-dir", help="the TFDS builder's manual_dir (the release)")
    data.add_argument("--tfds-data-dir", help="TFDS data directory (default: TFDS's own)")

    training = parser.add_argument_group("run (TrainConfig fields)")
    paper, tiny = recipe.defaults(), recipe.defaults("tiny")
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        if field.name in DATA_FIELDS:
            continue
        hint = hints[field.name]
        kind = hint if hint in (int, float) else str
        default = paper.get(field.name, field.default)
        if field.name in TINY_ONLY_FIELDS:
            help_text = f"--preset tiny only; default: {tiny.get(field.name, default)!r}"
        elif field.name == "preset":
            help_text = (f"a KerasHub preset or preset folder (default: {default!r}), "
                         "or 'tiny' for a small T5 trained from scratch")
        elif field.name == "run_dir":
            help_text = f"default: {recipe.default_run_dir('<mode>')}"
        else:
            help_text = f"default: {default!r}"
            if tiny.get(field.name, default) != default:
                help_text += f"; with --preset tiny: {tiny[field.name]!r}"
        training.add_argument("--" + field.name.replace("_", "-"), dest=field.name, type=kind,
                              choices=_FLAG_CHOICES.get(field.name), default=None,
                              help=help_text)

    output = parser.add_argument_group("output")
    output.add_argument("--no-export", dest="export", action="store_false",
                        help="do not export a SavedModel")
    output.add_argument("--export-dir", default="saved_models",
                        help="parent of the exports (default: saved_models)")
    output.add_argument("--progress", default="auto", choices=("auto", "0", "1", "2"),
                        help="Keras progress bar (default: auto)")
    return parser


@dataclasses.dataclass(frozen=True)
class RecipeOptions:
    """What the flags of a recipe resolve to."""

    config: TrainConfig
    source: DataSource
    export: bool
    export_dir: str
    verbose: str | int


def parse_flags(
    recipe: BenchmarkRecipe, argv: Sequence[str] | None = None, description: str | None = None
) -> RecipeOptions:
    """Parses a recipe's flags; bad values exit with a message naming the flag."""
    parser = build_parser(recipe, description)
    args = parser.parse_args(argv)
    changes = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TrainConfig)
        if f.name not in DATA_FIELDS and getattr(args, f.name) is not None
    }
    preset = changes.get("preset", recipe.defaults()["preset"])
    if preset != "tiny":
        shaped = sorted(TINY_ONLY_FIELDS & set(changes))
        if shaped:
            flags = ", ".join("--" + name.replace("_", "-") for name in shaped)
            parser.error(f"{flags} shape the tiny model only; preset {preset!r} brings its own.")
    try:
        config = recipe.config(**changes)
    except ValueError as error:
        parser.error(str(error))
    if args.tfds and args.data_dir is not None:
        parser.error("pass either --data-dir or --tfds, not both")
    data_dir = None if args.tfds else args.data_dir or os.environ.get("DSS_DATA_DIR")
    if not args.tfds:
        if data_dir is None:
            parser.error("pass --data-dir DIR (the release folder) or --tfds")
        if not os.path.isdir(os.path.join(data_dir, recipe.benchmark)):
            parser.error(
                f"--data-dir {data_dir}: no folder {recipe.benchmark}/ in it; the release "
                f"layout is {official.LAYOUT}"
            )
    try:
        source = DataSource(data_dir, args.tfds, args.tfds_manual_dir, args.tfds_data_dir)
    except ValueError as error:
        parser.error(str(error))
    verbose = args.progress if args.progress == "auto" else int(args.progress)
    return RecipeOptions(config, source, args.export, args.export_dir, verbose)


def main(
    recipe: BenchmarkRecipe, argv: Sequence[str] | None = None, description: str | None = None
) -> int:
    """Runs a recipe from the command line; returns the exit status.

    Args:
        recipe: The benchmark's recipe.
        argv: The flags (`sys.argv[1:]` when `None`); see `build_parser`.
        description: The `--help` text, e.g. the recipe file's docstring.
    """
    options = parse_flags(recipe, argv, description)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING)
    config = options.config
    print(f"{recipe.benchmark} {config.mode}: preset {config.preset}, labels "
          f"{config.label_source}, {config.steps} steps of batch {config.batch_size}, "
          f"run dir {config.run_dir}")
    results = run_recipe(
        recipe, config, options.source, export=options.export,
        export_dir=options.export_dir, verbose=options.verbose, echo=print,
    )
    print(f"Results written to {os.path.join(config.run_dir, RESULTS_FILE)} "
          f"({results['wall_seconds']:.0f} s)")
    return 0
