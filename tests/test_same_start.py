"""`benchmarks/same_start.py`: the authors' recorded batches fed to dss-keras, and the report."""

import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def same_start():
    """The module as `train_throughput.py` imports it, from its own folder."""
    sys.path.insert(0, os.path.join(REPO, "benchmarks"))
    return importlib.import_module("same_start")


@pytest.fixture(scope="module")
def preprocessor():
    from dss_keras import testing
    from dss_keras.preprocessor import MultiTaskPreprocessor

    return MultiTaskPreprocessor.from_seq2seq_lm(
        testing.tiny_seq2seq_lm(), max_input_length=256, max_label_length=256,
        max_rationale_length=256)


def recorded_example(preprocessor, record) -> dict:
    """What their collator is handed for a record: each task's `(input_ids, labels)`.

    Their tokenizer's ids are the SentencePiece pieces, cut at 255, then `</s>` (1); the
    label task's input starts with `predict: `, the rationale task's with `explain: `.
    """
    def ids(text):
        return [int(i) for i in preprocessor.tokenizer(text)][:255] + [1]

    return {"label": (ids("predict: " + record.input), ids(record.label)),
            "rationale": (ids("explain: " + record.input), ids(record.rationale))}


def write_recording(folder, preprocessor, batches) -> None:
    """batches.jsonl as the peer hook writes it: per step, the label call then the rationale's."""
    with open(folder / "batches.jsonl", "w") as f:
        for batch in batches:
            examples = [recorded_example(preprocessor, record) for record in batch]
            for task in ("label", "rationale"):
                f.write(json.dumps({"input_ids": [e[task][0] for e in examples],
                                    "labels": [e[task][1] for e in examples]}) + "\n")


def test_recorded_batches_are_what_our_pipeline_makes_of_those_examples(
        same_start, preprocessor, tmp_path):
    from dss_keras import testing
    from dss_keras.data import make_dataset

    records = testing.toy_records(12)
    order = [int(i) for i in np.random.default_rng(3).permutation(len(records))]
    ordered = [records[i] for i in order]
    write_recording(tmp_path, preprocessor, [ordered[k:k + 4] for k in range(0, 12, 4)])

    steps = same_start.recorded_steps(tmp_path, 3)
    fed = list(same_start.recorded_dataset(steps, preprocessor).as_numpy_iterator())
    expected, _ = make_dataset(ordered, preprocessor, batch_size=4, shuffle=False,
                               bucket_boundaries=[])
    expected = list(expected.as_numpy_iterator())
    assert len(fed) == len(expected) == 3
    for batch, want in zip(fed, expected):  # (x, y, sample_weight), both tasks in each
        for part, wanted_part in zip(batch, want):
            flat, wanted = _flat(part), _flat(wanted_part)
            assert flat.keys() == wanted.keys()
            for key in wanted:
                assert flat[key].dtype == wanted[key].dtype, key
                np.testing.assert_array_equal(flat[key], wanted[key], err_msg=key)
    with pytest.raises(RuntimeError, match="6 collator calls recorded, 8 wanted"):
        same_start.recorded_steps(tmp_path, 4)


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {name: leaf for key, value in tree.items()
                for name, leaf in _flat(value, f"{prefix}/{key}").items()}
    return {prefix: tree}


def test_examples_from_our_records_are_told_apart(same_start, preprocessor, tmp_path):
    from dss_keras import testing

    records = testing.toy_records(8)
    write_recording(tmp_path, preprocessor, [records[:4], records[4:]])
    steps = same_start.recorded_steps(tmp_path, 2)
    ours = same_start.example_keys(records, preprocessor)
    assert [key in ours for step in steps for key in same_start.step_keys(step)] == [True] * 8
    ids, labels = steps[1]["rationale"][2]
    steps[1]["rationale"][2] = (ids, labels[:-2] + [1])  # a rationale read otherwise
    found = [key in ours for step in steps for key in same_start.step_keys(step)]
    assert found == [True] * 6 + [False, True]


def test_their_losses_are_those_their_trainer_logged(same_start, tmp_path):
    rows = [{"loss": 95.28935241699219, "task_losses": [96.6379, 93.9408]},
            {"loss": 106.11354064941406, "task_losses": [87.4565, 124.7706]}]
    (tmp_path / "losses.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert same_start.official_losses(tmp_path, [[1, 95.2894], [2, 106.1135]]) == rows
    with pytest.raises(RuntimeError, match="step 2: their Trainer logged 106.1137"):
        same_start.official_losses(tmp_path, [[1, 95.2894], [2, 106.1137]])
    with pytest.raises(RuntimeError, match="logged 1 losses.*logging_steps=1"):
        same_start.official_losses(tmp_path, [[1, 95.2894]])


@pytest.mark.parametrize("info, message", [
    ({"dropout_rate": 0.1, "head_is_embedding": False}, "dropout_rate=0.1"),
    ({"dropout_rate": 0.0, "head_is_embedding": True}, "one tensor"),
])
def test_a_start_dss_keras_cannot_share_is_refused(same_start, tmp_path, info, message):
    (tmp_path / "checkpoint.json").write_text(json.dumps({"path": "/standin", **info}))
    with pytest.raises(RuntimeError, match=message):
        same_start.starting_checkpoint(tmp_path)
    (tmp_path / "checkpoint.json").write_text(json.dumps(
        {"path": "/standin", "dropout_rate": 0.0, "head_is_embedding": False}))
    assert same_start.starting_checkpoint(tmp_path) == "/standin"


def test_the_report_prints_both_curves_and_the_gaps(same_start, capsys):
    results = [
        {"side": "official", "round": 1, "step_losses": [95.289352, 106.113541, 156.191483]},
        {"side": "dss-keras (fast)", "round": 1,
         "step_losses": [95.289352, 106.151489, 156.132004],
         "examples_from_our_records": 23, "examples_trained": 24},
        {"side": "dss-keras (plain)", "round": 1, "step_losses": [95.30, 106.0, 156.0]},
        {"side": "reference", "round": 1},  # from its own weights: no curve
    ]
    same_start.print_loss_curves(results)
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("step"))
    assert header.split()[1:] == ["official", "dss-keras", "(fast)", "dss-keras", "(plain)"]
    start = lines.index(header) + 1
    rows = [line.split() for line in lines[start:start + 3]]
    assert rows == [["1", "95.289352", "95.289352", "95.300000"],
                    ["2", "106.113541", "106.151489", "106.000000"],
                    ["3", "156.191483", "156.132004", "156.000000"]]
    fast = lines[start + 3]  # after the curves, each side's gaps
    assert fast.startswith("dss-keras (fast): step 1 95.289352 against 95.289352")
    assert "relative difference 0.0e+00 (within 1e-04)" in fast
    assert "largest gap over 3 steps 0.059 (3.8e-04 relative) at step 3" in fast
    assert "23 of the 24 examples trained are records of dss-keras's pipeline" in lines[
        lines.index(fast) + 1]
    plain = next(line for line in lines if line.startswith("dss-keras (plain):"))
    assert "(NOT within 1e-04)" in plain and "at step 3" in plain


def test_the_gaps_are_taken_over_the_steps_both_sides_ran(same_start):
    gaps = same_start.loss_gaps([10.0, 9.0, 8.0, 7.0], [10.0005, 9.5, 8.0])
    assert gaps["steps"] == 3 and gaps["largest_gap_step"] == 2
    assert gaps["step_one_relative"] == pytest.approx(5e-5)
    assert gaps["largest_gap"] == pytest.approx(0.5)


@pytest.mark.slow
def test_the_same_start_side_trains_the_checkpoint_on_the_recorded_batches(
        same_start, preprocessor, tmp_path):
    """`train_throughput.py --side keras` with a recording: the checkpoint, their batches."""
    from dss_keras import hf_t5, testing
    from dss_keras.data.records import write_jsonl
    from dss_keras.model import DistillStepByStep

    checkpoint = hf_t5.save_checkpoint(testing.tiny_seq2seq_lm(), str(tmp_path / "standin"))
    records = testing.toy_records(12)
    write_jsonl(records, tmp_path / "records.jsonl")
    (tmp_path / "spm.model").write_bytes(testing.toy_vocabulary())
    record = tmp_path / "record"
    record.mkdir()
    (record / "checkpoint.json").write_text(json.dumps(
        {"path": checkpoint, "dropout_rate": 0.0, "head_is_embedding": False}))
    order = [records[i] for i in (7, 2, 9, 0, 4, 11, 5, 1, 3, 6, 8, 10)]
    write_recording(record, preprocessor, [order[k:k + 4] for k in range(0, 12, 4)])
    out = tmp_path / "keras.json"
    done = subprocess.run(
        [sys.executable, os.path.join(REPO, "benchmarks", "train_throughput.py"),
         "--side", "keras", "--variant", "fast", "--records", str(tmp_path / "records.jsonl"),
         "--spm", str(tmp_path / "spm.model"), "--batch-size", "4", "--steps", "2",
         "--warmup-steps", "1", "--threads", "2", "--learning-rate", "1e-3",
         "--official-record", str(record), "--json-out", str(out)],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["checkpoint"] == checkpoint and len(result["step_losses"]) == 3
    assert result["examples_trained"] == result["examples_from_our_records"] == 12
    # Step 1's loss is the checkpoint's own on the first recorded batch, dropout off.
    batch = next(iter(same_start.recorded_dataset(same_start.recorded_steps(record, 1),
                                                  preprocessor)))
    model = DistillStepByStep(hf_t5.load_checkpoint(checkpoint, dropout=0.0),
                              max_input_length=256, max_label_length=256,
                              max_rationale_length=256)
    loss, _ = model.compute_task_losses(*batch, training=True)
    assert result["step_losses"][0] == pytest.approx(float(loss), rel=1e-5)
    assert result["step_losses"][1] != pytest.approx(result["step_losses"][0], rel=1e-3)
