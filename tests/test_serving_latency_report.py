"""The serving benchmark: its floor counts, its comparisons, and one tiny run end to end."""

import json
import os
import subprocess
import sys

import pytest

from benchmark_scripts import BENCHMARKS, REPO, load_benchmark as load
KEYS = {"side", "p50_ms", "p95_ms", "examples_per_second", "floor_examples_per_second",
        "labels_changed"}




@pytest.fixture(scope="module")
def floor():
    return load("serving_floor")


@pytest.fixture(scope="module")
def latency():
    return load("serving_latency")


def test_model_counts_cover_every_weight_but_the_embedding(floor):
    from dss_keras import testing

    lm = testing.tiny_seq2seq_lm(num_layers=2)
    counts = floor.ModelCounts.of(lm)
    total = sum(int(w.numpy().size) for w in lm.backbone.weights)
    embedding = int(lm.backbone.token_embedding.embeddings.numpy().size)  # a lookup
    assert counts.encoder_params + counts.cross_params + counts.decoder_params == (
        total - embedding)
    assert counts.num_layers == 2 and counts.attention_width == 2 * 16


def test_floor_is_the_longer_of_memory_and_matrix_time(floor):
    machine = floor.Machine(10e9, {"float32": 100e9, "bfloat16": 400e9, "int8": 10e9})
    assert floor.floor_seconds(machine, (1e9, 1e9), "float32") == pytest.approx(0.1)
    assert floor.floor_seconds(machine, (1e9, 100e9), "bfloat16") == pytest.approx(0.25)
    faster = floor.fastest(machine, floor.Machine(20e9, {"float32": 50e9, "bfloat16": 500e9,
                                                          "int8": 1e9}))
    assert faster.memory_bytes_per_second == 20e9
    assert faster.matmul_flops_per_second == {"float32": 100e9, "bfloat16": 500e9, "int8": 10e9}


def test_generation_reads_decoder_weights_every_step_and_scoring_once(floor):
    counts = floor.ModelCounts(encoder_params=100, cross_params=10, decoder_params=50,
                               num_layers=1, attention_width=4)
    one_step, _ = counts.generation(1, 8, 1, "float32")
    four_steps, _ = counts.generation(1, 8, 4, "float32")
    assert four_steps - one_step > 3 * 50 * 4
    scored, _ = counts.scoring(1, 8, 5, 3, "bfloat16")
    assert scored < one_step  # every weight once, at 2 bytes


def row(side, p50, rate, floor_p50=10.0, floor_rate=100.0):
    return {"side": side, "p50_ms": p50, "examples_per_second": rate, "floor_p50_ms": floor_p50,
            "floor_examples_per_second": floor_rate}


def test_comparisons_at_the_same_precision_and_best_against_best(latency):
    rows = [row("float32", 100, 30), row("bfloat16", 80, 60), row("choose_label bfloat16", 20, 90),
            row("torch float32", 300, 20), row("torch bfloat16", 400, 25),
            row("torch bfloat16, 6 tokens", 160, 45)]
    lines = latency.comparisons(rows, 6)
    assert "float32 vs torch float32: 3.00x lower p50, 1.50x the examples/s" in lines
    assert any(line.startswith("best generation of ours vs best of theirs: p50 bfloat16 80.0 ms "
                               "vs torch float32 300.0 ms (3.75x)") for line in lines)
    assert any("choose_label bfloat16 vs torch bfloat16 generating the longest choice: 8.00x"
               in line for line in lines)


def test_targets_read_as_fractions_of_each_sides_floor(latency):
    rows = [row("bfloat16", 80, 60, floor_p50=50, floor_rate=100),
            row("choose_label bfloat16", 20, 90, floor_p50=5, floor_rate=80),
            row("torch float32", 300, 20), row("torch bfloat16, 6 tokens", 160, 45)]
    lines = latency.comparisons(rows, 6)
    # Generation against PyTorch generating the whole label: 100 ms and 60 examples/s.
    assert ("3x target against torch float32 and torch float32: p50 100.0 ms, "
            "60.0 examples/s") in lines
    assert ("  bfloat16: asks 50% of its batch-1 floor (50.0 ms) and 60% of its batch-32 floor "
            "(100.0 examples/s)") in lines
    # The scorer against PyTorch's best, generating just the longest choice included.
    assert ("3x target against torch bfloat16, 6 tokens and torch bfloat16, 6 tokens: p50 53.3 ms, "
            "135.0 examples/s") in lines
    assert any(line.startswith("  choose_label bfloat16: asks 9% of its batch-1 floor")
               and line.endswith("169% of its batch-32 floor (80.0 examples/s)") for line in lines)


def test_labels_changed_is_the_worst_measured_run(latency):
    agreement = {"a": {"float32": {"labels_changed": 0.0}, "bfloat16": {"labels_changed": 0.01}},
                 "b": {"bfloat16": {"labels_changed": 0.02}}}
    assert latency.labels_changed(agreement, "bfloat16") == 0.02
    assert latency.labels_changed(agreement, "torch float32") is None


@pytest.mark.slow
def test_a_tiny_run_writes_one_object_per_side(tmp_path):
    out = tmp_path / "serving.json"
    run = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "serving_latency.py"), "--num-layers", "1",
         "--hidden-dim", "32", "--intermediate-dim", "64", "--num-heads", "2",
         "--key-value-dim", "16", "--vocabulary-size", "1000", "--label-length", "4",
         "--requests", "2", "--batches", "1", "--batch-size", "2", "--threads", "1",
         "--skip-torch", "--json-out", str(out)],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, PYTHONPATH=REPO))
    assert run.returncode == 0, run.stderr[-3000:]
    rows = json.loads(out.read_text())
    assert [r["side"] for r in rows] == ["float32", "choose_label float32", "bfloat16",
                                         "choose_label bfloat16", "int8"]
    assert all(KEYS <= set(r) and r["floor_examples_per_second"] > 0 for r in rows)
    assert "Floor: memory" in run.stdout


def test_decoder_step_times_the_step_and_its_output_projection(capsys):
    step = load("decoder_step")
    results = step.main(["--batch-sizes", "1,3", "--repeats", "2", "--num-layers", "1",
                         "--hidden-dim", "32", "--intermediate-dim", "64", "--num-heads", "2",
                         "--key-value-dim", "16", "--vocabulary-size", "1000"])
    assert set(results) == {"step, batch 1", "head, batch 1", "step, batch 3", "head, batch 3"}
    assert all(len(seconds) == 2 and min(seconds) > 0 for seconds in results.values())
    assert "ops in one step: " in capsys.readouterr().out
