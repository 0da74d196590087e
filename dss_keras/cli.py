"""The `dss-keras` command, and the command line of the recipes. All argument parsing lives here
(one job: every parser and flag in one place, which is why the module runs past 450 lines).

    dss-keras quickstart                                  (also: dss-keras demo)
    dss-keras train --train-file train.jsonl --run-dir runs/mine --steps 2000
    dss-keras train --data cqa --data-dir path/to/datasets --preset t5_1.1_base
    dss-keras tune --data word_problems --modes distill_step_by_step,standard
    dss-keras evaluate runs/mine --file test.jsonl
    dss-keras predict runs/mine "Dee has 10 rocks. ..."
    dss-keras export runs/mine --name mine
    dss-keras predict --saved-model saved_models/mine "Dee has 10 rocks. ..."
    dss-keras extract --task cqa --input in.jsonl --output teacher.jsonl --model llama3.1 \\
        --base-url http://localhost:11434/v1
    python recipes/cqa.py --data-dir path/to/datasets     (see `run_recipe`)

Each subcommand parses its flags and calls one library function. `train`,
`tune` and the recipes take their run settings from `TrainConfig.add_flags`,
so a flag means the same everywhere. TensorFlow's C++ logs are off unless
`--verbose` is given, and its pooled CPU allocator and oneDNN kernels are on unless the
environment says otherwise (`dss_keras.tf_fast_path.cpu_runtime`).
"""

from __future__ import annotations

import os
import signal
import sys

# Ctrl-C before `main` can report it (while this module imports, or between the import and
# the call), kept for `main`, where the command owns the process: `dss-keras` or `-m`.
_EARLY_INTERRUPTS: list[int] = []


def _keep_interrupt(signum, frame) -> None:
    _EARLY_INTERRUPTS.append(signum)


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "dss-keras":
    signal.signal(signal.SIGINT, _keep_interrupt)

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from typing import Sequence  # noqa: E402

from dss_keras import interrupts  # noqa: E402
from dss_keras.config import (  # noqa: E402
    DEFAULT_ALPHAS,
    DEFAULT_TRAIN_FRACTIONS,
    EXPORT_PRECISIONS,
    MODES,
    SEARCHES,
    TUNED_FIELDS,
    TrainConfig,
    check_applicable,
)


def _add_command(commands, name: str, **kwargs) -> argparse.ArgumentParser:
    # No abbreviations: `--alpha` must not silently become `--alphas`.
    return commands.add_parser(name, allow_abbrev=False, **kwargs)


# --- train, evaluate, predict, export ------------------------------------------


def _config(args) -> TrainConfig:
    """The run config of `train` or `tune` flags; a bad value is a usage error (exit 2)."""
    try:
        return TrainConfig.from_args(args)
    except ValueError as error:
        args.parser.error(str(error))


def _train(args) -> int:
    from dss_keras.training import summary, train

    result = train(_config(args))
    print(summary(result.metrics))
    print(f"Run saved in {result.run_dir}")
    return 0


def _load_model(run_dir: str):
    """The model of a run directory or `.keras` file; a missing or damaged one says why."""
    from dss_keras.run_dir import load_model

    return load_model(run_dir)


def _run_metric(run_dir: str) -> str:
    """The metric a run was trained with (its config.json), else exact match."""
    path = os.path.join(os.path.dirname(run_dir) if run_dir.endswith(".keras") else run_dir,
                        "config.json")
    if not os.path.exists(path):
        return "exact_match"
    return TrainConfig.load(path).metric


def _evaluate(args) -> int:
    from dss_keras.data.records import read_records
    from dss_keras.evaluation import evaluate_labels

    metric = args.metric or _run_metric(args.run_dir)
    model = _load_model(args.run_dir)
    result = evaluate_labels(model, read_records(args.file), metric, args.batch_size)
    print(json.dumps({"metric": metric, **result.to_dict()}, indent=2))
    return 0


def _utf8_texts(args) -> list[str]:
    """The texts to predict, from the arguments or standard input; they must be UTF-8.

    Text that is not UTF-8 is refused, not repaired: the exported SavedModel
    decides the same way (`dss_keras.export.valid_utf8`).
    """
    if args.texts:
        texts = list(args.texts)
        for number, text in enumerate(texts, start=1):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError:
                args.parser.error(f"text argument {number} is not valid UTF-8")
        return texts
    texts = []
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise ValueError(f"<stdin>:{number}: not valid UTF-8") from None
        if line.strip():
            texts.append(line)
    return texts


def _predict(args) -> int:
    if args.saved_model and args.run_dir is not None:
        # With --saved-model there is no run directory: it was a text.
        args.texts, args.run_dir = [args.run_dir, *args.texts], None
    if not args.saved_model and not args.run_dir:
        args.parser.error("predict needs a run directory or --saved-model DIR")
    texts = _utf8_texts(args)
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
    if args.format == "hf":
        from dss_keras.hf_t5 import export_for_transformers

        if args.version is not None:
            args.parser.error("--version numbers SavedModels; --format hf writes <base>/hf")
        if args.precision != "float32" or args.label_set is not None:
            args.parser.error("--precision and --label-set shape a SavedModel; --format hf "
                              "writes the float32 weights as they are")
        path = export_for_transformers(_load_model(args.run_dir), args.export_dir,
                                       name=args.name)
    else:
        from dss_keras.export import export_for_serving

        label_set = _export_label_set(args)
        path = export_for_serving(_load_model(args.run_dir), args.export_dir, args.version,
                                  name=args.name, precision=args.precision,
                                  label_set=label_set)
    print(f"Exported {path}")
    return 0


def _export_label_set(args):
    """`--label-set`, else the label set of the run's data (CQA's choices, NLI's labels)."""
    from dss_keras.label_scorer import LabelSet, label_set_for_data

    if args.label_set == "none":
        return None
    if args.label_set is not None:
        try:
            return LabelSet.parse(args.label_set)
        except ValueError as error:
            args.parser.error(str(error))
    folder = os.path.dirname(args.run_dir) if args.run_dir.endswith(".keras") else args.run_dir
    config = os.path.join(folder, "config.json")
    return label_set_for_data(TrainConfig.load(config).data) if os.path.exists(config) else None


# --- extract (the teacher) -----------------------------------------------------


def _add_extract_command(commands) -> None:
    """`dss-keras extract`: rationales and labels from a teacher LLM (`dss_keras.teacher`)."""
    from dss_keras.teacher.backends.adaptation import OMITTABLE
    from dss_keras.teacher.tasks import ANSWER_KINDS, TASKS

    extract = _add_command(
        commands, "extract", help="label inputs with a teacher LLM's rationales and labels",
        description="Label inputs with a teacher LLM's rationales and labels. Exit status: 0 "
        "done; 3 some requests failed (a rerun retries them); 4 stopped at the spending limit "
        "(a rerun continues); 1 an error.")
    extract.add_argument("--task", required=True, choices=TASKS + ("custom",))
    extract.add_argument("--input", required=True, help="records to label (.jsonl or .csv)")
    extract.add_argument("--output", required=True,
                         help="teacher records (.jsonl); an existing file is resumed")
    extract.add_argument("--backend", default="openai", choices=("openai", "keras-hub"))
    extract.add_argument("--model", required=True,
                         help="the endpoint's model name, or a KerasHub preset or directory")
    endpoint = extract.add_argument_group("endpoint (openai backend)")
    endpoint.add_argument("--base-url", help="OpenAI-compatible endpoint (default: OpenAI)")
    endpoint.add_argument("--api-key-env", default="OPENAI_API_KEY",
                          help="environment variable holding the API key")
    endpoint.add_argument("--route", default="chat", choices=("chat", "completions"))
    endpoint.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    endpoint.add_argument("--timeout", type=float, default=600.0,
                          help="seconds per request, connecting, waiting and reading together "
                          "(default 600: reasoning models take minutes); retried like a timeout")
    endpoint.add_argument("--max-retries", type=int, default=5)
    endpoint.add_argument("--seed", type=int, help="sampling seed, where supported")
    endpoint.add_argument("--reasoning-model", action="store_true",
                          help="send max_completion_tokens and no temperature or stop, with a "
                          "budget of 4096 tokens (what an OpenAI reasoning model takes; "
                          "otherwise learnt from the endpoint's first refusal)")
    endpoint.add_argument("--omit-parameter", action="append", choices=OMITTABLE, default=[],
                          help="leave a parameter out of every request (n: one request per "
                          "sample); repeatable")
    extract.add_argument("--batch-size", type=int, default=8, help="keras-hub: prompts per batch")
    prompt = extract.add_argument_group("prompt")
    prompt.add_argument("--demonstrations",
                        help="JSONL of {input, rationale, label}: a custom task's, or instead "
                        "of a built-in task's (a new prompt version)")
    prompt.add_argument("--instruction", help="the prompt's first line (custom, or instead of "
                        "a built-in task's)")
    prompt.add_argument("--answer-format",
                        help=f"custom: labels a,b,c or one of {', '.join(ANSWER_KINDS)}")
    prompt.add_argument("--prompt-version", help="overrides the template's version")
    sampling = extract.add_argument_group("sampling")
    sampling.add_argument("--samples", type=int, default=1,
                          help="completions per input; more than one votes")
    sampling.add_argument("--temperature", type=float,
                          help="default: 0 for one sample, 0.7 for more")
    sampling.add_argument("--max-tokens", type=int,
                          help="completion tokens per request (default 256; 4096 for a "
                          "reasoning model, whose thinking counts against it)")
    sampling.add_argument("--keep-reasoning", action="store_true",
                          help="keep a reasoning model's reasoning in each record's teacher "
                          "object (never in the rationale)")
    output = extract.add_argument_group("what is written")
    output.add_argument("--filter", default="all", choices=("all", "parsed", "gold"),
                        help="what the training file keeps (parsed, gold: "
                        "<output>.<filter>.jsonl)")
    output.add_argument("--min-agreement", type=float, default=0.0,
                        help="with --filter parsed/gold and --samples: keep records whose "
                        "winning label has at least this share of the votes")
    output.add_argument("--limit", type=int, help="label only the first N inputs")
    output.add_argument("--retry-failed", action="store_true",
                        help="ask again for the inputs whose completions did not parse")
    cost = extract.add_argument_group("cost")
    cost.add_argument("--dry-run", action="store_true",
                      help="print the first request, the tokens and the cost; send and write "
                      "nothing")
    cost.add_argument("--tokenizer", help="dry run: a tokenizer.json to count tokens with "
                      "(otherwise an estimate)")
    cost.add_argument("--price-input", type=float, help="US dollars per million input tokens")
    cost.add_argument("--price-output", type=float,
                      help="US dollars per million output tokens")
    cost.add_argument("--max-spend-tokens", type=int,
                      help="stop starting requests once this run has used this many tokens")
    cost.add_argument("--max-cost", type=float,
                      help="stop starting requests once this run has spent this many dollars")
    batch = extract.add_argument_group("batch route")
    batch.add_argument("--batch", action="store_true",
                       help="send what is left through OpenAI's Batch API (about half price, "
                       "answers within 24 h); a rerun resumes its batches")
    batch.add_argument("--batch-poll", type=float, default=30.0,
                       help="seconds between looks at a batch")
    batch.add_argument("--write-batch-file",
                       help="only write the requests left, for `vllm run-batch -i FILE`")
    batch.add_argument("--read-batch-results",
                       help="read the results of `vllm run-batch -o FILE` into the output")
    extract.add_argument("--no-progress", action="store_true", help="no progress bar")
    extract.set_defaults(run=_extract, parser=extract)


def _extract(args) -> int:
    from dss_keras.teacher.backends.adaptation import RequestParameters
    from dss_keras.teacher.batch import BatchRoute
    from dss_keras.teacher.dry_run import dry_run
    from dss_keras.teacher.extraction import extract
    from dss_keras.teacher.spending import Prices

    if (args.price_input is None) != (args.price_output is None):
        args.parser.error("give both --price-input and --price-output")
    prices = (Prices(args.price_input, args.price_output)
              if args.price_input is not None else None)
    if args.backend == "openai":
        parameters = (RequestParameters.for_reasoning_model(args.omit_parameter)
                      if args.reasoning_model else
                      RequestParameters(omitted=frozenset(args.omit_parameter)))
        options = dict(base_url=args.base_url, api_key_env=args.api_key_env, route=args.route,
                       concurrency=args.concurrency, timeout=args.timeout,
                       max_retries=args.max_retries, seed=args.seed, parameters=parameters)
    else:
        options = dict(batch_size=args.batch_size, seed=args.seed)
    common = dict(model=args.model, backend_options=options, demonstrations=args.demonstrations,
                  answer_format=args.answer_format, instruction=args.instruction,
                  prompt_version=args.prompt_version, samples=args.samples,
                  temperature=args.temperature, max_tokens=args.max_tokens, limit=args.limit,
                  retry_failed=args.retry_failed, prices=prices)
    if args.dry_run:
        print(dry_run(args.input, args.output, args.task, args.backend,
                      tokenizer=args.tokenizer, **common))
        return 0
    route = None
    if args.batch or args.write_batch_file or args.read_batch_results:
        if args.backend != "openai":
            args.parser.error("the batch route needs --backend openai")
        route = BatchRoute(poll_interval=args.batch_poll, write_requests=args.write_batch_file,
                           read_results=args.read_batch_results)
    report = extract(
        args.input, args.output, args.task, args.backend, filter=args.filter,
        min_agreement=args.min_agreement, keep_reasoning=args.keep_reasoning,
        max_spend_tokens=args.max_spend_tokens, max_cost=args.max_cost, batch=route,
        progress=not args.no_progress, **common)
    print(report)
    if report.stopped and (args.max_spend_tokens or args.max_cost) and not args.write_batch_file:
        return 4
    return 0 if not report.request_failures else 3


def _add_model_commands(commands) -> None:
    evaluate = _add_command(commands, "evaluate", help="label accuracy of a trained run")
    evaluate.add_argument("run_dir", help="run directory (or a .keras file)")
    evaluate.add_argument("--file", required=True, help="records (.jsonl or .csv)")
    evaluate.add_argument("--metric",
                          help="exact_match, equation, or a benchmark name (default: the "
                          "run's own, exact_match for a .keras file outside a run)")
    evaluate.add_argument("--batch-size", type=int, default=64)
    evaluate.set_defaults(run=_evaluate)

    predict = _add_command(commands, "predict", help="generate labels (or rationales)")
    predict.add_argument("run_dir", nargs="?", default=None,
                         help="run directory (or a .keras file)")
    predict.add_argument("texts", nargs="*", help="inputs; read from stdin when absent")
    predict.add_argument("--saved-model", help="an exported SavedModel version directory")
    predict.add_argument("--explain", action="store_true", help="generate rationales")
    predict.set_defaults(run=_predict, parser=predict)

    export = _add_command(commands, "export", help="write a label-only SavedModel for TF "
                          "Serving, or a transformers checkpoint (--format hf)")
    export.add_argument("run_dir", help="run directory (or a .keras file)")
    export.add_argument("--format", choices=("savedmodel", "hf"), default="savedmodel",
                        help="savedmodel: saved_models/<name>/<version>; hf: a transformers T5 "
                             "checkpoint in saved_models/<name>/hf")
    export.add_argument("--name", help="model name: the base directory is saved_models/<name>")
    export.add_argument("--export-dir", help="the model's base directory (instead of --name)")
    export.add_argument("--version", type=int,
                        help="SavedModel version number (default: the next one)")
    export.add_argument("--precision", choices=EXPORT_PRECISIONS, default="float32",
                        help="weights and compute of the graph: bfloat16 halves the bytes each "
                        "token reads; int8 quarters the file (default: float32)")
    export.add_argument("--label-set",
                        help="a closed label set adds the one-pass `choose_label` signature: "
                        "labels separated by commas, `choices` for multiple-choice inputs' "
                        "`(a) ...` lines, or `none` (default: the run's benchmark's: CQA's "
                        "choices, NLI's three labels)")
    export.set_defaults(run=_export, parser=export)


# --- quickstart ----------------------------------------------------------------

# Fields the quickstart sets itself: its data, and the two modes it compares.
_QUICKSTART_FIXED = ("data", "data_dir", "train_file", "validation_file", "test_file",
                     "validation_fraction", "mode", "metric")


def _quickstart(args) -> int:
    from dss_keras import quickstart

    changes = TrainConfig.changes_from_args(args)
    if args.num_train is not None:
        changes["data"] = f"word_problems:{args.num_train}"
    try:
        config = quickstart.get_config(**changes)
        check_applicable(changes, config)
    except ValueError as error:
        args.parser.error(str(error))
    results = quickstart.run_quickstart(config)
    print(f"\nHeld-out word problems, seed {config.seed} (exact match of the generated "
          "answer):\n")
    print(quickstart.format_table(results))
    print(f"\nModels saved under {os.path.join(config.run_dir, f'seed-{config.seed}')}"
          "/<mode>/model.keras")
    if args.export_dir:
        quickstart.serve_example(results["distilling step-by-step"].model, args.export_dir)
    return 0


def _add_quickstart_command(commands, common) -> None:
    from dss_keras.quickstart import get_config

    quick = _add_command(
        commands, "quickstart", aliases=["demo"], parents=[common],
        help="distilling step-by-step vs. standard finetuning on generated word problems",
        description="Trains a tiny T5 twice on generated word problems, on labels only and "
        "on labels and rationales, and compares them on 500 held-out problems.")
    quick.add_argument("--num-train", type=int,
                       help="generated training problems (default: 2000, 500 held out)")
    quick.add_argument("--export-dir", default="saved_models/quickstart",
                       help="where the label-only SavedModel goes ('' to skip the export)")
    TrainConfig.add_flags(quick, exclude=_QUICKSTART_FIXED, defaults=get_config().to_dict(),
                          title="settings (TrainConfig fields; the quickstart's defaults)")
    quick.set_defaults(run=_quickstart, parser=quick)


# --- tune ----------------------------------------------------------------------


def _numbers(kind):
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers: {text!r}")
    return parse


def _modes(text: str) -> list[str]:
    modes = [m for m in text.split(",") if m]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown mode {unknown[0]!r}; choose from {MODES}")
    return modes


def _tune(args) -> int:
    from dss_keras import tuning
    from dss_keras.training import load_splits

    if args.report_only:
        report = tuning.write_reports(args.project_dir, target_accuracy=args.target_accuracy,
                                      plots=not args.no_plots)
        print(tuning.format_report(report, args.target_accuracy))
        return 0
    config = _config(args)
    try:
        hypermodel = tuning.DSSHyperModel(
            config, load_splits(config), alphas=args.alphas,
            train_fractions=args.train_fractions, modes=args.modes,
            learning_rates=args.learning_rates, seeds=args.seeds,
            verbose="auto" if args.verbose else 0,
        )
    except ValueError as error:  # choices or data that cannot make a search
        args.parser.error(str(error))
    report = tuning.tune(hypermodel, args.project_dir, search=args.search,
                         max_trials=args.max_trials, oracle_seed=args.oracle_seed,
                         target_accuracy=args.target_accuracy, plots=not args.no_plots,
                         verbose=1)
    if report is not None:
        print(tuning.format_report(report, args.target_accuracy))
    return 0


def _add_tune_command(commands, common) -> None:
    tune = _add_command(commands, 
        "tune", parents=[common],
        help="KerasTuner search over alpha and the data fraction",
        description="KerasTuner search over alpha and the training-data fraction. A trial is "
        "the run `dss-keras train` makes with the base flags and the trial's values.")
    search = tune.add_argument_group("search")
    search.add_argument("--project-dir", default="runs/tune",
                        help="project directory; an existing one is resumed")
    search.add_argument("--search", choices=SEARCHES, default="random")
    search.add_argument("--max-trials", type=int, help="trials in all (default: the whole grid)")
    search.add_argument("--alphas", type=_numbers(float), default=list(DEFAULT_ALPHAS))
    search.add_argument("--train-fractions", type=_numbers(float),
                        default=list(DEFAULT_TRAIN_FRACTIONS))
    search.add_argument("--modes", type=_modes, default=["distill_step_by_step"],
                        help="distill_step_by_step and/or standard, comma-separated")
    search.add_argument("--learning-rates", type=_numbers(float),
                        help="choices (default: the base config's)")
    search.add_argument("--seeds", type=_numbers(int), help="choices (default: 0)")
    search.add_argument("--oracle-seed", type=int, default=1)
    search.add_argument("--target-accuracy", type=float,
                        help="report the smallest fraction whose best setting reaches it")
    search.add_argument("--report-only", action="store_true",
                        help="write the reports of an existing project; train nothing")
    search.add_argument("--no-plots", action="store_true")
    TrainConfig.add_flags(tune, exclude=(*TUNED_FIELDS, "run_dir"),
                          title="base config (TrainConfig fields; each trial sets "
                          + ", ".join(TUNED_FIELDS) + ")")
    tune.set_defaults(run=_tune, parser=tune)


# --- recipes -------------------------------------------------------------------


def recipe_parser(recipe, description: str | None = None) -> argparse.ArgumentParser:
    """The flags of a benchmark recipe: `TrainConfig` fields, the data source, the output."""
    from dss_keras.experiments import RECIPE_FIELDS

    parser = argparse.ArgumentParser(
        description=description or f"The {recipe.benchmark} experiment of Distilling step-by-step",
        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show TensorFlow's logs")
    parser.add_argument("--traceback", action="store_true",
                        help="show the Python traceback of an error (or DSS_KERAS_TRACEBACK=1)")
    parser.add_argument("--tfds", action="store_true",
                        help=f"read the dss_{recipe.benchmark} TFDS builder (its manual_dir is "
                        "--data-dir) instead of the release folder")
    TrainConfig.add_flags(parser, exclude=RECIPE_FIELDS, defaults=recipe.defaults())
    output = parser.add_argument_group("output")
    output.add_argument("--no-export", dest="export", action="store_false",
                        help="do not export a SavedModel")
    output.add_argument("--export-dir", default="saved_models",
                        help="parent of the exports (default: saved_models)")
    output.add_argument("--progress", default="auto", choices=("auto", "0", "1", "2"),
                        help="Keras progress bar (default: auto)")
    return parser


def parse_recipe_flags(recipe, argv: Sequence[str] | None = None,
                       description: str | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """The config (the recipe's settings, then the flags) and the parsed flags of a recipe.

    Bad flags and values exit with status 2 and a message naming the flag.
    """
    parser = recipe_parser(recipe, description)
    args = parser.parse_args(argv)
    changes = TrainConfig.changes_from_args(args)
    try:
        config = recipe.config(tfds=args.tfds, **changes)
        check_applicable(changes, config)
    except ValueError as error:
        parser.error(str(error))
    return config, args


def run_recipe(recipe, argv: Sequence[str] | None = None,
               description: str | None = None) -> int:
    """Runs a benchmark recipe (`recipes/<benchmark>.py`) from its flags; returns the exit status.

    Args:
        recipe: The benchmark's `dss_keras.experiments.BenchmarkRecipe`.
        argv: The flags (`sys.argv[1:]` when `None`); `--help` lists them.
        description: The `--help` text, e.g. the recipe file's docstring.
    """
    def parse():
        config, args = parse_recipe_flags(recipe, argv, description)
        _prepare_tensorflow(args.verbose)
        args.config = config
        return args

    return _as_command(parse, lambda args: _run_recipe(recipe, args.config, args))


def _run_recipe(recipe, config: TrainConfig, args) -> int:
    from dss_keras.experiments import RESULTS_FILE, run_experiment

    print(f"{recipe.benchmark} {config.mode}: preset {config.preset}, labels "
          f"{config.label_source}, {config.steps} steps of batch {config.batch_size}, "
          f"run dir {config.run_dir}")
    verbose = args.progress if args.progress == "auto" else int(args.progress)
    results = run_experiment(recipe, config, export=args.export, export_dir=args.export_dir,
                             verbose=verbose, echo=print)
    print(f"Results written to {os.path.join(config.run_dir, RESULTS_FILE)} "
          f"({results['wall_seconds']:.0f} s)")
    return 0


# --- the command ---------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The `dss-keras` parser and its subcommands."""
    common = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="log at INFO level and show TensorFlow's logs")
    common.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error (or DSS_KERAS_TRACEBACK=1)")
    parser = argparse.ArgumentParser(prog="dss-keras", description=__doc__.splitlines()[0],
                                     parents=[common], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)

    train = _add_command(commands, "train", parents=[common],
                                help="train a model (flags = TrainConfig fields)")
    TrainConfig.add_flags(train)
    train.set_defaults(run=_train, parser=train)
    _add_model_commands(commands)
    _add_tune_command(commands, common)
    _add_quickstart_command(commands, common)
    _add_extract_command(commands)
    return parser


def _needs_tensorflow(args) -> bool:
    """Every command but `extract` from an endpoint, which only talks HTTP (no TensorFlow)."""
    return not (args.command == "extract" and args.backend == "openai")


def _prepare_tensorflow(verbose: bool, tensorflow: bool = True) -> None:
    """Log levels and, for a command that uses TensorFlow, fast CPU settings and quiet
    logs, set before TensorFlow loads."""
    if tensorflow:
        from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime
        from dss_keras.quiet import quiet_tensorflow

        use_fast_cpu_runtime(warn=False)  # `main()` called again in one process: no news
        quiet_tensorflow(verbose)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING)


def _message(error: BaseException) -> str:
    """One line that says what went wrong, without the Python machinery."""
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, (ValueError, OSError, RuntimeError)):  # teacher errors are Runtime
        return " ".join(str(error).split()) or type(error).__name__
    return f"{type(error).__name__}: {error} (--traceback shows where)"


def _interrupted(traceback: bool) -> int:
    """Ctrl-C: one line and exit status 130 (or the traceback, when asked)."""
    if traceback:
        raise
    print("dss-keras: interrupted", file=sys.stderr)
    # CPython ends the process by SIGINT at exit when a Ctrl-C crossed code that exec() ran
    # from a string (dataclasses make their methods so), handled or not; running a string
    # again clears that mark, so that the exit status is 130 wherever the Ctrl-C came.
    exec("")
    return 130


def _traceback_asked(args=None) -> bool:
    return bool(getattr(args, "traceback", False)) or os.environ.get("DSS_KERAS_TRACEBACK") == "1"


def _as_command(parse, run) -> int:
    """One command from its first moment to its last: `parse()` reads the flags into
    `args` (and prepares TensorFlow), then `run(args)` returns the exit status.

    A failure of `run` prints one `dss-keras: error: ...` line and returns 1
    (`--traceback` raises it instead); a Ctrl-C anywhere, even one that Python
    dropped or a library turned into another error, prints `dss-keras:
    interrupted` and returns 130.
    """
    args = None
    try:
        if signal.getsignal(signal.SIGINT) is _keep_interrupt:  # inside `try`: none is lost
            signal.signal(signal.SIGINT, signal.default_int_handler)
        with interrupts.recording_ctrl_c():
            try:
                args = parse()
                interrupts.raise_if_interrupted()
                status = run(args)
                interrupts.raise_if_interrupted()  # a Ctrl-C that Python dropped on the way
                return status
            except Exception as error:
                if interrupts.received():  # a Ctrl-C that a library turned into another error
                    return _interrupted(_traceback_asked(args))
                if args is None or _traceback_asked(args):
                    raise
                print(f"dss-keras: error: {_message(error)}", file=sys.stderr)
                return 1
    except KeyboardInterrupt:
        return _interrupted(_traceback_asked(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs `dss-keras` with `argv` (`sys.argv[1:]` when `None`); returns the exit status.

    Usage errors exit with status 2 (argparse's message); failures print one
    line, `dss-keras: error: <file>:<line>: ...` where there is a place to
    name, and return 1. `--traceback` or `DSS_KERAS_TRACEBACK=1` raises them
    instead. Ctrl-C, however early, prints `dss-keras: interrupted` and
    returns 130.
    """
    def parse():
        if _EARLY_INTERRUPTS:  # pressed while the package was still loading
            raise KeyboardInterrupt
        args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        args.verbose = getattr(args, "verbose", False)
        _prepare_tensorflow(args.verbose, tensorflow=_needs_tensorflow(args))
        return args

    return _as_command(parse, lambda args: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
