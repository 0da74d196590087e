"""The `dss-keras` command. Each subcommand parses flags and calls one library function.

    dss-keras demo
    dss-keras train --train-file train.jsonl --run-dir runs/cqa --steps 2000
    dss-keras evaluate runs/cqa --file test.jsonl
    dss-keras predict runs/cqa "Dee has 10 rocks. ..."
    dss-keras export runs/cqa --name cqa
    dss-keras predict --saved-model saved_models/cqa "Dee has 10 rocks. ..."
    dss-keras extract --task cqa --input in.jsonl --output teacher.jsonl --model llama3.1 \\
        --base-url http://localhost:11434/v1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from typing import Sequence

from dss_keras.config import TrainConfig


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per `TrainConfig` field, named like it (`--run-dir` for `run_dir`)."""
    hints = typing.get_type_hints(TrainConfig)
    for field in dataclasses.fields(TrainConfig):
        flag = "--" + field.name.replace("_", "-")
        hint = hints[field.name]
        if hint is bool:
            kind = lambda s: s.lower() in ("1", "true", "yes")  # noqa: E731
        elif hint in (int, float):
            kind = hint
        else:
            kind = str
        parser.add_argument(flag, type=kind, default=field.default, dest=field.name,
                            help=f"(default: {field.default!r})")


def _train(args) -> int:
    from dss_keras.training import train

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig.from_dict({k: v for k, v in vars(args).items() if k in names})
    result = train(config)
    print(json.dumps({k: result.metrics[k] for k in ("validation", "test") if k in result.metrics},
                     indent=2))
    print(f"Run saved in {result.run_dir}")
    return 0


def _load_model(run_dir: str):
    import os

    import keras

    import dss_keras  # noqa: F401  (registers the classes)

    path = run_dir if run_dir.endswith(".keras") else os.path.join(run_dir, "model.keras")
    if not os.path.exists(path):
        raise SystemExit(f"No trained model at {path}: train one with `dss-keras train`.")
    return keras.models.load_model(path)


def _evaluate(args) -> int:
    from dss_keras.data.records import read_records
    from dss_keras.evaluation import evaluate_labels

    model = _load_model(args.run_dir)
    result = evaluate_labels(model, read_records(args.file), args.metric, args.batch_size)
    print(json.dumps(result.to_dict(), indent=2))
    return 0


def _predict(args) -> int:
    texts = list(args.texts) or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if args.saved_model:
        from dss_keras.export import load_and_predict

        outputs = load_and_predict(args.saved_model, texts,
                                   "explain" if args.explain else "serving_default")
    else:
        model = _load_model(args.run_dir)
        outputs = model.explain(texts) if args.explain else model.predict_labels(texts)
    for output in outputs:
        print(output)
    return 0


def _export(args) -> int:
    from dss_keras.export import export_for_serving

    model = _load_model(args.run_dir)
    path = export_for_serving(model, args.export_dir, args.version, name=args.name)
    print(f"Exported {path}")
    return 0


def _demo(args) -> int:
    from dss_keras import demo

    return demo.main(["--run-dir", args.run_dir, "--steps", str(args.steps)])


def _add_extract_command(commands) -> None:
    """`dss-keras extract`: rationales and labels from a teacher LLM (`dss_keras.teacher`)."""
    from dss_keras.teacher.prompts import ANSWER_KINDS, TASKS

    extract = commands.add_parser(
        "extract", help="label inputs with a teacher LLM's rationales and labels")
    extract.add_argument("--task", required=True, choices=TASKS + ("custom",))
    extract.add_argument("--input", required=True, help="records to label (.jsonl or .csv)")
    extract.add_argument("--output", required=True,
                         help="teacher records (.jsonl); an existing file is resumed")
    extract.add_argument("--backend", default="openai", choices=("openai", "keras-hub"))
    extract.add_argument("--model", required=True,
                         help="the endpoint's model name, or a KerasHub preset or directory")
    extract.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OpenAI)")
    extract.add_argument("--api-key-env", default="OPENAI_API_KEY",
                         help="environment variable holding the API key")
    extract.add_argument("--route", default="chat", choices=("chat", "completions"))
    extract.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    extract.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    extract.add_argument("--max-retries", type=int, default=5)
    extract.add_argument("--seed", type=int, help="sampling seed, where supported")
    extract.add_argument("--batch-size", type=int, default=8, help="keras-hub: prompts per batch")
    extract.add_argument("--demonstrations", help="custom: JSONL of {input, rationale, label}")
    extract.add_argument("--instruction", default="", help="custom: the prompt's first line")
    extract.add_argument("--answer-format",
                         help=f"custom: labels a,b,c or one of {', '.join(ANSWER_KINDS)}")
    extract.add_argument("--prompt-version", help="overrides the template's version")
    extract.add_argument("--samples", type=int, default=1,
                         help="completions per input; more than one votes")
    extract.add_argument("--temperature", type=float,
                         help="default: 0 for one sample, 0.7 for more")
    extract.add_argument("--max-tokens", type=int, default=256)
    extract.add_argument("--filter", default="all", choices=("all", "parsed", "gold"),
                         help="what the training file keeps (parsed, gold: <output>.<filter>.jsonl)")
    extract.add_argument("--limit", type=int, help="label only the first N inputs")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract.set_defaults(run=_extract)


def _extract(args) -> int:
    from dss_keras.teacher.backends.openai_compatible import TeacherError
    from dss_keras.teacher.extraction import extract

    if args.backend == "openai":
        options = dict(base_url=args.base_url, api_key_env=args.api_key_env, route=args.route,
                       concurrency=args.concurrency, timeout=args.timeout,
                       max_retries=args.max_retries, seed=args.seed)
    else:
        options = dict(batch_size=args.batch_size, seed=args.seed)
    try:
        report = extract(
            args.input, args.output, args.task, args.backend, model=args.model,
            backend_options=options, demonstrations=args.demonstrations,
            answer_format=args.answer_format, instruction=args.instruction,
            prompt_version=args.prompt_version, samples=args.samples,
            temperature=args.temperature, max_tokens=args.max_tokens, filter=args.filter,
            limit=args.limit, progress=not args.no_progress)
    except (TeacherError, ValueError, RuntimeError) as e:
        raise SystemExit(f"dss-keras extract: {e}") from None
    print(report)
    return 0 if not report.request_failures else 3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dss-keras", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train a model (flags = TrainConfig fields)")
    _add_config_flags(train)
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("evaluate", help="label accuracy of a trained run")
    evaluate.add_argument("run_dir", help="run directory (or a .keras file)")
    evaluate.add_argument("--file", required=True, help="records (.jsonl or .csv)")
    evaluate.add_argument("--metric", default="exact_match",
                          help="exact_match, equation, or a benchmark name")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.set_defaults(run=_evaluate)

    predict = commands.add_parser("predict", help="generate labels (or rationales)")
    predict.add_argument("run_dir", nargs="?", default=None,
                         help="run directory (or a .keras file)")
    predict.add_argument("texts", nargs="*", help="inputs; read from stdin when absent")
    predict.add_argument("--saved-model", help="an exported SavedModel version directory")
    predict.add_argument("--explain", action="store_true", help="generate rationales")
    predict.set_defaults(run=_predict)

    export = commands.add_parser("export", help="write a label-only SavedModel for TF Serving")
    export.add_argument("run_dir", help="run directory (or a .keras file)")
    export.add_argument("--name", help="model name: exports go to saved_models/<name>/<version>")
    export.add_argument("--export-dir", help="the model's base directory (instead of --name)")
    export.add_argument("--version", type=int, help="version number (default: the next one)")
    export.set_defaults(run=_export)

    tune = commands.add_parser(
        "tune", add_help=False,
        help="KerasTuner search over alpha and data fraction (see `dss-keras tune --help`)")
    tune.add_argument("tune_args", nargs=argparse.REMAINDER)

    demo = commands.add_parser("demo", help="the quickstart comparison")
    demo.add_argument("--run-dir", default="runs/quickstart")
    demo.add_argument("--steps", type=int, default=1200)
    demo.set_defaults(run=_demo)
    _add_extract_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["tune"]:
        # `tune` owns its flags (it has many); hand them over untouched.
        from dss_keras import tuning

        return tuning.main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    if args.command == "predict":
        if args.saved_model and args.run_dir is not None:
            # With --saved-model there is no run directory: it was a text.
            args.texts, args.run_dir = [args.run_dir, *args.texts], None
        if not args.saved_model and not args.run_dir:
            raise SystemExit("predict needs a run directory or --saved-model DIR")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
