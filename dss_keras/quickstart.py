"""The quickstart: distilling step-by-step against standard finetuning, side by side.

On generated one-operation word problems with a distractor sentence
(`data="word_problems"`: 2,000 training problems, 500 held out, see
`dss_keras.data.word_problems`), a tiny T5 is trained from scratch twice with
the same data, steps and seed: once on labels only (standard finetuning) and
once on labels and rationales (distilling step-by-step). Both runs go
through `dss_keras.training.train`, are saved under
`runs/quickstart/seed-<seed>/<mode>/` and are compared on the held-out
problems. One seed per call; the spread over seeds is in BENCHMARKS.md
(`benchmarks/quickstart_seeds.py`).

`get_config()` is the one place of the quickstart's settings: `dss-keras
quickstart` (and `make demo`), `recipes/quickstart.py` and the benchmarks
that repeat it start from it.
"""

from __future__ import annotations

import os

from dss_keras.config import TrainConfig

MODES = {"standard finetuning": "standard", "distilling step-by-step": "distill_step_by_step"}


def get_config(**overrides) -> TrainConfig:
    """The quickstart's settings: ~0.3M-parameter T5 (2+2 layers, width 64), 1,200 steps.

    `mode` is set by `run_quickstart` for each of its two runs, and each run
    lives in `<run_dir>/seed-<seed>/<mode>/`.

    Args:
        **overrides: `TrainConfig` fields to change, e.g. `steps=200`.

    Examples:

    >>> config = get_config(steps=10)
    >>> config.data, config.steps, config.learning_rate, config.max_label_length
    ('word_problems', 10, 0.003, 8)
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
        run_dir="runs/quickstart",
    )
    return config.replace(**overrides)


def run_config(config: TrainConfig, mode: str) -> TrainConfig:
    """The config of one of the two runs: `mode`, in `<run_dir>/seed-<seed>/<mode>/`.

    Examples:

    >>> run_config(get_config(seed=1), "standard").run_dir
    'runs/quickstart/seed-1/standard'
    """
    return config.replace(mode=mode,
                          run_dir=os.path.join(config.run_dir, f"seed-{config.seed}", mode))


def run_quickstart(
    config: TrainConfig | None = None,
    verbose: str | int = "auto",
    echo=print,
) -> dict:
    """Trains both modes on the same data and returns their `TrainResult`s by name.

    Args:
        config: The settings (`get_config()` when `None`); its `mode` is set
            for each run, its `run_dir` is the parent of both.
        verbose: Keras progress bar setting.
        echo: Where progress lines go.
    """
    from dss_keras.training import load_splits, train

    config = config or get_config()
    results = {}
    splits = None
    for name, mode in MODES.items():
        run = run_config(config, mode)
        splits = splits or load_splits(run)
        echo(f"\n== {name}, seed {run.seed} ({run.run_dir})")
        results[name] = train(run, splits, verbose=verbose)
    return results


def format_table(results: dict) -> str:
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
