"""The throughput benchmark's report: ratios against the first side of each round."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from benchmark_scripts import REPO, load_benchmark


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("train_throughput")


def _side(side, examples_per_second, peak_rss_mb, round_number):
    return dict(side=side, examples_per_second=examples_per_second,
                seconds_per_step=8 / examples_per_second, peak_rss_mb=peak_rss_mb,
                tokens_input_real=700, tokens_input_padded=800, tokens_target_real=250,
                tokens_target_padded=300, round=round_number)


def test_each_round_is_compared_with_its_own_official_side(benchmark, capsys):
    results = [_side("official", 4.0, 2000, 1), _side("dss-keras (fast)", 6.0, 3000, 1),
               _side("official", 3.0, 2500, 2), _side("dss-keras (fast)", 5.4, 2500, 2)]
    args = argparse.Namespace(batch_size=8, steps=20, warmup_steps=5, threads=2)
    benchmark.print_table(args, results, load_before=0.5)
    lines = capsys.readouterr().out.splitlines()
    rows = [line for line in lines if line.startswith("dss-keras (fast)")]
    assert rows[0].split()[-2:] == ["1.50x", "1.50x"]  # 6.0 / 4.0 and 3000 / 2000
    assert rows[1].split()[-2:] == ["1.80x", "1.00x"]  # against round 2's official: 5.4 / 3.0
    summary = next(line for line in lines if "speed" in line and "runs" in line)
    assert "speed 1.65x (1.50-1.80)" in summary and "peak RSS 1.25x (1.00-1.50)" in summary
    assert "2 runs" in summary


def test_one_round_prints_no_summary(benchmark, capsys):
    results = [_side("official", 4.0, 2000, 1), _side("dss-keras (fast)", 6.0, 3000, 1)]
    args = argparse.Namespace(batch_size=8, steps=20, warmup_steps=5, threads=2)
    benchmark.print_table(args, results, load_before=0.5)
    out = capsys.readouterr().out
    assert "1.50x" in out and "rounds" not in out


def test_a_failing_side_keeps_what_the_others_measured(benchmark, monkeypatch, tmp_path, capsys):
    def fails():
        raise RuntimeError("run_official.sh failed")

    monkeypatch.setattr(benchmark, "prepare_inputs", lambda args, workdir: (None, None))
    monkeypatch.setattr("dss_keras.quiet.quiet_tensorflow", lambda verbose=False: None)
    sides = [lambda: _side("official", 4.0, 2000, None),
             lambda: _side("dss-keras (fast)", 6.0, 3000, None), fails]
    monkeypatch.setattr(benchmark, "_sides", lambda *args: sides)
    out = tmp_path / "sides.json"
    with pytest.raises(RuntimeError, match="run_official.sh failed"):
        benchmark.main(["--official", "peer", "--skip-reference", "--variants", "fast",
                        "--json-out", str(out)])
    assert "1.50x" in capsys.readouterr().out
    assert [r["side"] for r in json.loads(out.read_text())] == ["official", "dss-keras (fast)"]


def test_rounds_below_one_are_refused_before_any_work(benchmark, monkeypatch):
    monkeypatch.setattr(benchmark, "prepare_inputs", lambda *args: pytest.fail("prepared"))
    with pytest.raises(SystemExit, match="--rounds must be at least 1"):
        benchmark.main(["--rounds", "0", "--skip-reference", "--variants", "fast"])


def test_long_side_names_keep_the_columns_aligned(benchmark, capsys):
    results = [_side("official", 4.0, 2000, round_number) for round_number in (1, 2)]
    results[1:1] = [_side("dss-keras (fast)", 5.0, 3000, 1),
                    _side("dss-keras (fast-release-memory)", 6.0, 3000, 1)]
    results += [_side("dss-keras (fast)", 5.0, 3000, 2),
                _side("dss-keras (fast-release-memory)", 6.0, 3000, 2)]
    args = argparse.Namespace(batch_size=8, steps=20, warmup_steps=5, threads=2)
    benchmark.print_table(args, results, load_before=0.5)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("side"))
    rows = [line for line in lines if line.startswith(("official", "dss-keras"))]
    assert {len(row) for row in rows} == {len(header)}
    assert {row.index(" 1 ") for row in rows[:3]} == {header.index("round") + 3}
    summary = [line for line in lines if "speed" in line and "runs" in line]
    assert len(summary) == 2 and len({line.index("speed") for line in summary}) == 1


def test_bf16_with_the_float32_reference_is_refused_before_any_work(benchmark, monkeypatch):
    monkeypatch.setattr(benchmark, "prepare_inputs", lambda *args: pytest.fail("prepared"))
    with pytest.raises(SystemExit, match="--bf16.*--skip-reference"):
        benchmark.main(["--bf16", "--variants", "fast"])


def test_bf16_reaches_every_side(benchmark, tmp_path):
    args = benchmark.parse_args(["--bf16", "--official", "peer", "--skip-reference",
                                 "--variants", "fast,plain", "--data-dir", "release"])
    official, *keras_sides = benchmark._sides(args, ["fast", "plain"], tmp_path / "r.jsonl",
                                              tmp_path / "spm.model", tmp_path)
    assert official.func is benchmark.run_official
    env = benchmark.official_env(args, tmp_path / "spm.model", tmp_path)
    # Their run.py's own flags, through the hook (--lr: their default, 5e-5).
    assert env["DSS_PEER_RUN_ARGS"] == "--lr 5e-05 --bf16"
    assert env["PYTHONPATH"].split(os.pathsep)[0].endswith("official_hooks")
    for side in keras_sides:  # each dss-keras side runs in its own process, with --bf16
        command = side.args[0]
        assert command[command.index("--side") + 1] == "keras" and "--bf16" in command
    plain = benchmark.parse_args(["--skip-reference", "--variants", "fast", "--data-dir", "x"])
    assert "--bf16" not in benchmark._sides(plain, ["fast"], None, None, tmp_path)[0].args[0]
    plain_env = benchmark.official_env(plain, tmp_path / "spm.model", tmp_path)
    assert plain_env["DSS_PEER_RUN_ARGS"] == "--lr 5e-05"
    assert "DSS_PEER_RECORD" not in plain_env and "STANDIN_DROPOUT" not in plain_env


def test_same_start_reaches_every_side(benchmark, tmp_path):
    args = benchmark.parse_args(["--same-start", "--official", "peer", "--skip-reference",
                                 "--variants", "fast,fast-keras-epsilon", "--data-dir", "x",
                                 "--learning-rate", "1e-3"])
    official, *keras_sides = benchmark._sides(args, ["fast", "fast-keras-epsilon"],
                                              tmp_path / "r.jsonl", tmp_path / "spm.model",
                                              tmp_path)
    env = benchmark.official_env(args, tmp_path / "spm.model", tmp_path)
    assert env["DSS_PEER_RUN_ARGS"] == "--lr 0.001" and env["STANDIN_DROPOUT"] == "0.0"
    record = env["DSS_PEER_RECORD"]  # where the hook writes, and each dss-keras side reads
    for side in keras_sides:
        command = side.args[0]
        assert command[command.index("--official-record") + 1] == record
        assert command[command.index("--learning-rate") + 1] == "0.001"


@pytest.mark.parametrize("argv, message", [
    (["--same-start", "--variants", "fast"], "give --official"),
    (["--same-start", "--official", "peer", "--variants", "fast,fast-hf-init"],
     "other weights than the checkpoint's.*fast-hf-init"),
])
def test_same_start_without_a_shared_start_is_refused_before_any_work(
        benchmark, monkeypatch, argv, message):
    monkeypatch.setattr(benchmark, "prepare_inputs", lambda *args: pytest.fail("prepared"))
    with pytest.raises(SystemExit, match=message):
        benchmark.main(argv + ["--skip-reference"])


# Stand-ins for torch (no CUDA) and transformers' TrainingArguments, which refuses bf16 on a
# machine without CUDA unless use_cpu is set.
FAKE_TORCH = "class cuda:\n    is_available = staticmethod(lambda: False)\n"
FAKE_TRANSFORMERS = """
import dataclasses

@dataclasses.dataclass
class TrainingArguments:
    bf16: bool = False
    use_cpu: bool = False

    def __post_init__(self):
        if self.bf16 and not self.use_cpu:
            raise ValueError("Your setup doesn't support bf16/gpu.")

@dataclasses.dataclass
class Seq2SeqTrainingArguments(TrainingArguments):
    pass
"""
THEIR_RUN = """
import json, sys
from transformers import Seq2SeqTrainingArguments
bf16 = "--bf16" in sys.argv
print(json.dumps([sys.argv[1:], Seq2SeqTrainingArguments(bf16=bf16).use_cpu]))
"""


@pytest.mark.parametrize("script, extra, argv, use_cpu", [
    ("bench_run.py", "--bf16", ["--dataset", "cqa", "--bf16"], True),
    ("bench_run.py", "", ["--dataset", "cqa"], False),
    ("other.py", "--bf16", ["--dataset", "cqa"], False),  # only the authors' training process
])
def test_the_peer_hook_adds_run_flags_to_their_run_only(tmp_path, script, extra, argv, use_cpu):
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    (tmp_path / "transformers").mkdir()
    (tmp_path / "transformers" / "__init__.py").write_text(FAKE_TRANSFORMERS)
    (tmp_path / script).write_text(THEIR_RUN)
    argv_out = tmp_path / "argv.json"
    env = {**os.environ, "DSS_PEER_RUN_ARGS": extra, "DSS_PEER_ARGV_OUT": str(argv_out),
           "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "benchmarks", "official_hooks"),
                                          str(tmp_path)])}
    env.pop("DSS_PEER_TOKEN_COUNTS", None)
    env.pop("DSS_PEER_RECORD", None)
    done = subprocess.run([sys.executable, str(tmp_path / script), "--dataset", "cqa"],
                          env=env, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "sitecustomize" not in done.stderr, done.stderr
    assert json.loads(done.stdout) == [argv, use_cpu]
    if script == "bench_run.py":  # the command line is recorded for the report
        assert json.loads(argv_out.read_text()) == argv
    else:
        assert not argv_out.exists()


def test_the_fast_side_is_the_model_dss_keras_train_builds(benchmark, monkeypatch):
    """`fast` is `training.build_model`'s model, untouched: only the authors' settings differ."""
    import dataclasses

    import keras

    from dss_keras import testing
    from dss_keras.backbones import tiny_t5
    from dss_keras.config import TrainConfig
    from dss_keras.training import build_model

    monkeypatch.setattr(benchmark, "SHAPE", dict(
        vocabulary_size=256, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
        key_value_dim=8, dropout=0.1))
    records, proto = testing.toy_records(16), testing.toy_vocabulary()
    fast = benchmark.VARIANTS["fast"]
    model, _ = benchmark.build_variant(proto, records, fast, steps=10, batch_size=4)
    config = benchmark.benchmark_config(fast, steps=10, batch_size=4)
    changed = {f.name for f in dataclasses.fields(TrainConfig)
               if getattr(config, f.name) != getattr(TrainConfig(), f.name)}
    assert changed <= {"learning_rate", "lr_schedule", "steps", "adam_epsilon",
                       "adam_epsilon_placement",
                       "clip_global_norm", "batch_size", "max_input_length", "max_label_length",
                       "max_rationale_length"}  # the authors' optimizer and budgets
    shape = {k: v for k, v in benchmark.SHAPE.items() if k != "vocabulary_size"}
    reference = build_model(config, records, None, seq2seq_lm=tiny_t5(
        proto=proto, embedding_size=benchmark.SHAPE["vocabulary_size"], **shape))

    def unnamed(config, *more):
        return {k: v for k, v in config.items() if k not in ("name", *more)}

    assert unnamed(model.get_config(), "seq2seq_lm") == unnamed(reference.get_config(),
                                                                "seq2seq_lm")
    assert unnamed(model.optimizer.get_config()) == unnamed(reference.optimizer.get_config())
    # No variant patch: the fused update and the one flat train function are the model's own.
    assert "_fuses" not in vars(model.optimizer) and "_clip_gradients" not in vars(model.optimizer)
    assert "make_train_function" not in vars(model) and model.train_function is None
    assert type(model).make_train_function is not keras.Model.make_train_function


# Stand-ins for the transformers pieces the hook records with: their Trainer's arguments,
# model, collator (which just hands the features back) and training step (their
# `TaskPrefixTrainer.compute_loss`: one model call per task, alpha 0.5).
FAKE_RECORDED_TRANSFORMERS = """
import types

class TrainingArguments:
    def __init__(self, logging_steps=500):
        self.logging_steps = logging_steps
        self.__post_init__()

    def __post_init__(self):
        pass

class T5ForConditionalGeneration:
    training = True

    def __init__(self):
        self.config = types.SimpleNamespace(dropout_rate=0.0)
        self.shared = types.SimpleNamespace(weight=[0])
        self.lm_head = types.SimpleNamespace(weight=[0])

    @classmethod
    def from_pretrained(cls, path):
        return cls()

    def get_input_embeddings(self):
        return self.shared

    def get_output_embeddings(self):
        return self.lm_head

    def forward(self, input_ids, labels):
        return types.SimpleNamespace(loss=float(sum(map(sum, labels))))

    def __call__(self, **inputs):
        return self.forward(**inputs)

class DataCollatorForSeq2Seq:
    def __call__(self, features, return_tensors=None):
        return {key: [f[key] for f in features] for key in features[0]}

class Trainer:
    def training_step(self, model, inputs, num_items_in_batch=None):
        return 0.5 * model(**inputs["pred"]).loss + 0.5 * model(**inputs["expl"]).loss
"""
THEIR_RECORDED_RUN = """
import json
from transformers import DataCollatorForSeq2Seq, T5ForConditionalGeneration, Trainer
from transformers import TrainingArguments
arguments = TrainingArguments(logging_steps=250)
model = T5ForConditionalGeneration.from_pretrained("local/standin")
collate, trainer = DataCollatorForSeq2Seq(), Trainer()
for step in range(2):
    pred = collate([{"input_ids": [5, step, 1], "labels": [7, 1]},
                    {"input_ids": [6, 1], "labels": [8, 9, 1]}])
    expl = collate([{"input_ids": [4, 5, step, 1], "labels": [3, 3, 1]},
                    {"input_ids": [4, 6, 1], "labels": [2, 1]}])
    trainer.training_step(model, {"pred": pred, "expl": expl})
print(json.dumps(arguments.logging_steps))
"""


@pytest.mark.parametrize("script", ["bench_run.py", "other.py"])
def test_the_peer_hook_records_their_start_batches_and_losses(tmp_path, script):
    for name, source in (("torch", FAKE_TORCH), ("transformers", FAKE_RECORDED_TRANSFORMERS)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(source)
    (tmp_path / script).write_text(THEIR_RECORDED_RUN)
    record = tmp_path / "record"
    record.mkdir()
    env = {**os.environ, "DSS_PEER_RECORD": str(record),
           "PYTHONPATH": os.pathsep.join([os.path.join(REPO, "benchmarks", "official_hooks"),
                                          str(tmp_path)])}
    for name in ("DSS_PEER_TOKEN_COUNTS", "DSS_PEER_RUN_ARGS", "DSS_PEER_ARGV_OUT"):
        env.pop(name, None)
    done = subprocess.run([sys.executable, str(tmp_path / script)], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0 and "sitecustomize" not in done.stderr, done.stderr
    if script != "bench_run.py":  # only the authors' training process
        assert json.loads(done.stdout) == 250 and not any(record.iterdir())
        return
    assert json.loads(done.stdout) == 1  # their Trainer logs every step's loss
    assert json.loads((record / "checkpoint.json").read_text()) == {
        "path": str(tmp_path / "local" / "standin"), "dropout_rate": 0.0,
        "head_is_embedding": False}
    calls = [json.loads(line) for line in (record / "batches.jsonl").read_text().splitlines()]
    assert calls[0] == {"input_ids": [[5, 0, 1], [6, 1]], "labels": [[7, 1], [8, 9, 1]]}
    assert calls[3] == {"input_ids": [[4, 5, 1, 1], [4, 6, 1]], "labels": [[3, 3, 1], [2, 1]]}
    assert len(calls) == 4  # a step: the label task's call, then the rationale task's
    losses = [json.loads(line) for line in (record / "losses.jsonl").read_text().splitlines()]
    assert losses == [{"loss": 0.5 * 26 + 0.5 * 10, "task_losses": [26.0, 10.0]}] * 2

