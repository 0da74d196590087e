"""A benchmark experiment of the paper: settings layered on the paper's, and one run.

A recipe file (`recipes/cqa.py`, ...) holds a `get_config()` that returns a
`BenchmarkRecipe`; its docstring holds the commands that run it, and
`dss_keras.cli.run_recipe` reads its flags:

```python
def get_config():
    return experiments.BenchmarkRecipe("cqa", tiny={"vocabulary_size": 3000})

if __name__ == "__main__":
    sys.exit(cli.run_recipe(get_config(), description=__doc__))
```

`run_experiment(config)`:

1. loads train, valid and test with `dss_keras.data.load` (`config.data` is
   the benchmark: the authors' release in `data_dir`, or `tfds:<benchmark>`);
2. reports the teacher's label accuracy on the training split;
3. trains with `dss_keras.training.train` (validation every `eval_every`
   steps, the benchmark's metric), then evaluates on test;
4. writes `<run_dir>/results.json` (config, teacher report, validation and
   test accuracy, wall time);
5. exports a label-only SavedModel to `saved_models/<benchmark>-<mode>/<version>/`
   unless asked not to.

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

import dataclasses
import json
import logging
import os
import time
import types
from typing import Any, Callable, Mapping

from dss_keras.config import BENCHMARKS, TINY_PRESET, TrainConfig, check_names
from dss_keras.data import official
from dss_keras.data.sources import Splits
from dss_keras.files import write_json

logger = logging.getLogger(__name__)

PAPER_SETTINGS: Mapping[str, Any] = types.MappingProxyType(
    {
        "preset": "t5_1.1_base",
        "mode": "distill_step_by_step",
        "label_source": "gt",
        "alpha": 0.5,
        "learning_rate": 5e-5,
        "lr_schedule": "linear",
        "weight_decay": 0.0,
        "adam_epsilon": 1e-8,
        "adam_epsilon_placement": "pytorch",
        "clip_global_norm": 1.0,
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
"""The paper's settings, shared by the four benchmarks: T5 v1.1 base and the optimizer of the
authors' runs (the Hugging Face Trainer's defaults: AdamW with epsilon 1e-8 and no weight
decay, the learning rate decaying linearly to 0 with no warm-up, gradients clipped to global
norm 1.0)."""

TINY_SETTINGS: Mapping[str, Any] = types.MappingProxyType(
    {
        "vocabulary_size": 3000,
        "hidden_dim": 64,
        "num_layers": 2,
        "num_heads": 4,
        "intermediate_dim": 128,
        "learning_rate": 1e-3,
        "batch_size": 32,
        "steps": 1000,
        "eval_every": 250,
    }
)
"""A T5 of 0.3M-0.6M parameters trained from scratch, for CPU runs (`preset="tiny"`).

A model trained from scratch needs a far larger learning rate than a
pretrained one. The token budgets are each benchmark's own (`recipe.tiny`):
CQA and SVAMP inputs are under 80 words, well inside 256 tokens; their labels
fit 16 (CQA) and 32 (SVAMP, digits split) tokens.
"""

RECIPE_FIELDS = frozenset(
    {"data", "train_file", "validation_file", "test_file", "validation_fraction", "metric"}
)
"""Fields a recipe sets itself: the data is the benchmark's, the metric its own."""

RESULTS_FILE = "results.json"


def _check_fields(settings: Mapping[str, Any], what: str) -> None:
    check_names(settings)
    fixed = sorted(set(settings) & RECIPE_FIELDS)
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
    >>> tiny.learning_rate, tiny.hidden_dim, tiny.steps, tiny.run_dir
    (0.001, 64, 300, 'runs/svamp-distill_step_by_step')
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
        if self.benchmark not in BENCHMARKS:
            raise ValueError(
                f"Unknown benchmark; expected one of {', '.join(BENCHMARKS)}. "
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
        if (preset or values["preset"]) == TINY_PRESET:
            values.update(TINY_SETTINGS)
            values.update(self.tiny)
        if preset is not None:
            values["preset"] = preset
        return values

    def default_run_dir(self, mode: str) -> str:
        return os.path.join("runs", f"{self.benchmark}-{mode}")

    def config(self, *, tfds: bool = False, **changes) -> TrainConfig:
        """The run's `TrainConfig`: the recipe's settings, then `changes`.

        Args:
            tfds: Read the benchmark from its TFDS builder rather than the
                release folder (`data_dir` is then the builder's manual_dir).
            **changes: `TrainConfig` fields; `run_dir` defaults to
                `runs/<benchmark>-<mode>`.
        """
        _check_fields(changes, "changes")
        values = self.defaults(changes.get("preset"))
        values.update(changes)
        values.setdefault("run_dir", self.default_run_dir(values["mode"]))
        values["data"] = f"tfds:{self.benchmark}" if tfds else self.benchmark
        return TrainConfig.from_dict(values)


def _exporter() -> tuple[Callable | None, str | None]:
    """`dss_keras.export.export_for_serving`, or `None` and why not."""
    try:
        from dss_keras.export import export_for_serving
    except ImportError as error:
        return None, f"dss_keras.export.export_for_serving is not available ({error})"
    return export_for_serving, None


def _previous_export(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        export = json.load(f).get("export") or {}
    saved = export.get("path")
    return saved if saved and os.path.isdir(saved) else None


def run_experiment(
    recipe: BenchmarkRecipe,
    config: TrainConfig,
    *,
    export: bool = True,
    export_dir: str = "saved_models",
    verbose: str | int = "auto",
    echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Loads the benchmark, trains, evaluates, writes `results.json`, exports.

    Args:
        recipe: The benchmark's recipe.
        config: The run's config (usually `recipe.config(...)`): its data
            must be the benchmark, and its metric the benchmark's.
        export: Export a label-only SavedModel to
            `<export_dir>/<benchmark>-<mode>/<version>/`. A finished run that
            was exported already is not exported again.
        export_dir: The parent of the exports.
        verbose: Keras progress bar setting.
        echo: Where the reports go (`print` for a command line); the logger
            by default.

    Returns:
        The content of `<run_dir>/results.json`.
    """
    from dss_keras.training import load_splits, train, training_records

    echo = echo or logger.info
    if config.data not in (recipe.benchmark, f"tfds:{recipe.benchmark}"):
        raise ValueError(f"The {recipe.benchmark} recipe reads its own benchmark. "
                         f"Received: data={config.data!r}")
    if config.metric != recipe.benchmark:
        raise ValueError(
            f"The {recipe.benchmark} recipe scores with its own metric. "
            f"Received: metric={config.metric!r}"
        )
    start = time.perf_counter()
    data = load_splits(config)
    teacher = [official.teacher_report(recipe.benchmark, data.train, "train")]
    used = training_records(config, data.train)
    if len(used) < len(data.train):
        teacher.append(official.teacher_report(
            recipe.benchmark, used, f"train ({config.train_fraction:g} used)"))
    echo(f"Data: {len(data.train)} train ({len(used)} used), "
         f"{len(data.validation)} valid, {len(data.test)} test")
    for report in teacher:
        echo(f"Teacher: {report}")

    result = train(config, data, verbose=verbose)
    from dss_keras import strategies

    if not strategies.is_chief(strategies.make_strategy(config.strategy)):
        return _results(recipe, config, data, teacher, result.metrics)  # the chief reports
    results = _results(recipe, config, data, teacher, result.metrics)
    results_path = os.path.join(config.run_dir, RESULTS_FILE)
    previous = _previous_export(results_path)
    results["export"] = {"path": previous} if previous else None
    results["wall_seconds"] = time.perf_counter() - start
    write_json(results_path, results)
    echo(summary(results))
    if export and not previous:
        results["export"] = _export(result.model, recipe, config, export_dir, echo)
        results["wall_seconds"] = time.perf_counter() - start
        write_json(results_path, results)
    return results


def _results(recipe, config: TrainConfig, data: Splits, teacher, metrics) -> dict[str, Any]:
    validation, test = metrics.get("validation"), metrics.get("test")
    return {
        "benchmark": recipe.benchmark,
        "config": config.to_dict(),
        "data": {
            "source": config.data,
            "data_dir": config.data_dir,
            "num_train": len(data.train),
            "num_train_used": teacher[-1].num_records,
            "num_valid": len(data.validation),
            "num_test": len(data.test),
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
    from dss_keras.training import accuracy_figure

    config = results["config"]
    return (
        f"{results['benchmark']} {config['mode']} (labels: {config['label_source']}, "
        f"preset {config['preset']}, {results['steps_trained']} steps): "
        f"{accuracy_figure(results, 'validation')}, {accuracy_figure(results, 'test')}"
    )
