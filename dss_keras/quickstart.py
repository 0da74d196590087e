"""The quickstart: distilling step-by-step against standard finetuning, side by side.

On generated one-operation word problems with a distractor sentence
(`data="word_problems"`: 2,000 training problems, 500 held out, see
`dss_keras.data.word_problems`), a tiny T5 is trained from scratch twice with
the same data, steps and seed: once on labels only (standard finetuning) and
once on labels and rationales (distilling step-by-step). Both runs go
through `dss_keras.training.train`, are saved under `runs/quickstart/<mode>/`
and are compared on the held-out problems. One seed per call; the spread
over seeds is in BENCHMARKS.md (`benchmarks/quickstart_seeds.py`).
"""

from __future__ import annotations

import os

from dss_keras.config import TrainConfig
from dss_keras.training import TrainResult, load_splits, train

MODES = {"standard finetuning": "standard", "distilling step-by-step": "distill_step_by_step"}


def quickstart_config(run_dir: str = "runs/quickstart", **overrides) -> TrainConfig:
    """The quickstart's settings: ~0.3M-parameter T5 (2+2 layers, width 64), 1,200 steps.

    Examples:

    >>> config = quickstart_config(steps=10)
    >>> config.data, config.steps, config.learning_rate
    ('word_problems', 10, 0.003)
    """
    config = TrainConfig(
        data="word_problems",
        validation_fraction=0.0,
        preset="tiny",
        vocabulary_size=400,
        hidden_dim=64,
        num_layers=2,
        num_heads=4,
        intermediate_dim=128,
        alpha=0.5,
        max_input_length=64,
        max_label_length=8,
        max_rationale_length=32,
        batch_size=32,
        learning_rate=3e-3,
        steps=1200,
        eval_every=400,
        # At width 64 the step is all overhead: packing ran 1.1x slower here (BENCHMARKS.md).
        examples_per_row=1,
        run_dir=run_dir,
    )
    return config.replace(**overrides)


def run_quickstart(
    run_dir: str = "runs/quickstart",
    verbose: str | int = "auto",
    echo=print,
    **overrides,
) -> dict[str, TrainResult]:
    """Trains both modes on the same data and returns their results by name.

    Args:
        run_dir: Parent directory; each mode gets a subdirectory.
        verbose: Keras progress bar setting.
        echo: Where progress lines go.
        **overrides: `TrainConfig` fields, e.g. `steps=200` or `seed=1`.
    """
    results = {}
    splits = None
    for name, mode in MODES.items():
        config = quickstart_config(os.path.join(run_dir, mode), mode=mode, **overrides)
        splits = splits or load_splits(config)
        echo(f"\n== {name}, seed {config.seed} ({config.run_dir})")
        results[name] = train(config, splits, verbose=verbose)
    return results


def format_table(results: dict[str, TrainResult]) -> str:
    """A plain-text table of the runs' accuracies, losses and wall times."""
    header = (f"{'':26s}{'label accuracy':>16s}{'label loss':>12s}{'rationale loss':>16s}"
              f"{'train time':>12s}")
    lines = [header, "-" * len(header)]
    for name, result in results.items():
        m = result.metrics
        history = m["history"]
        rationale = history.get("rationale_loss", [float("nan")])[-1]
        lines.append(
            f"{name:26s}{m['test']['accuracy'] * 100:15.1f}%{history['label_loss'][-1]:12.3f}"
            f"{rationale:16.3f}{m['train_seconds']:11.0f}s"
        )
    return "\n".join(lines)


def serve_example(model, export_dir: str = "saved_models/quickstart", echo=print) -> str:
    """Exports the label-only SavedModel and queries it through its signature."""
    from dss_keras.data.word_problems import word_problems
    from dss_keras.export import export_for_serving, load_and_predict

    path = export_for_serving(model, export_dir)
    questions = [r.input for r in word_problems(3, seed=20_000)]
    answers = load_and_predict(path, questions)
    echo(f"\nExported the label-only SavedModel to {path}; its serving_default signature says:")
    for question, answer in zip(questions, answers):
        echo(f"  {question}\n    -> {answer}")
    return path
