"""The loss comparison of `train_throughput.py --same-start`: one start, the same batches.

The authors' side loads the stand-in checkpoint `run_official.sh` builds (dropout 0), and the
peer hook (official_hooks/sitecustomize.py, with $DSS_PEER_RECORD naming a folder) writes
there which checkpoint their run loaded, every batch their collator built (the unpadded token
ids of each example, in the order their sampler handed them out) and every step's loss. This
module reads that folder for the dss-keras side: the checkpoint to load with
`dss_keras.hf_t5.load_checkpoint(path, dropout=0.0)`, and the recorded batches as the
tensors `dss_keras.data.make_dataset` gives a model (both tasks of the same examples in each
batch, T5's layout: the decoder starts from the pad id and reads the targets shifted by one).
It then prints both sides' loss after every step and the gaps between them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

CHECKPOINT, BATCHES, LOSSES = "checkpoint.json", "batches.jsonl", "losses.jsonl"
# Their collator's two calls of a step, in this order (their `TaskPrefixDataCollator`).
TASKS = ("label", "rationale")
# Their Trainer logs each loss rounded to 4 decimals.
LOGGED_DECIMALS = 4
STEP_ONE_TOLERANCE = 1e-4  # relative: the two sides' first loss, before any update


def _json_lines(path: Path) -> list:
    if not path.exists():
        raise RuntimeError(f"{path}: not written; did the peer hook run in their process? "
                           f"(official_hooks/ on PYTHONPATH, DSS_PEER_RECORD set)")
    return [json.loads(line) for line in path.read_text().splitlines()]


def starting_checkpoint(folder: str | os.PathLike) -> str:
    """The checkpoint their run loaded, once it is known to start where dss-keras can.

    Raises:
        RuntimeError: when their model trains with dropout, or trains its output layer and
            embedding as one tensor (a tied T5 v1.1, which dss-keras's T5 trains apart).
    """
    path = Path(folder) / CHECKPOINT
    if not path.exists():
        raise RuntimeError(f"{path}: not written; their run loaded no T5ForConditionalGeneration")
    info = json.loads(path.read_text())
    if info["dropout_rate"] != 0:
        raise RuntimeError(f"their model trains with dropout, so the two sides' steps differ "
                           f"by chance (run_official.sh takes STANDIN_DROPOUT=0.0). "
                           f"Received: dropout_rate={info['dropout_rate']}")
    if info["head_is_embedding"]:
        raise RuntimeError(f"{info['path']}: their output layer and embedding are one tensor, "
                           f"which dss-keras's untied T5 trains as two. "
                           f"Received: head_is_embedding=True")
    return info["path"]


def recorded_steps(folder: str | os.PathLike, steps: int) -> list[dict]:
    """The first `steps` recorded batches: per task, each example's `(input_ids, labels)`."""
    calls = _json_lines(Path(folder) / BATCHES)
    if len(calls) < 2 * steps:
        raise RuntimeError(f"{Path(folder) / BATCHES}: {len(calls)} collator calls recorded, "
                           f"{2 * steps} wanted ({steps} steps of {len(TASKS)} tasks)")
    return [{task: list(zip(calls[2 * step + k]["input_ids"], calls[2 * step + k]["labels"]))
             for k, task in enumerate(TASKS)} for step in range(steps)]


def _padded(rows: list, value, dtype):
    import numpy as np

    out = np.full((len(rows), max(len(row) for row in rows)), value, dtype)
    for index, row in enumerate(rows):
        out[index, :len(row)] = row
    return out


def batch_tensors(step: dict, pad_token_id: int = 0, decoder_start_id: int = 0) -> tuple:
    """One recorded step as `(x, y, sample_weight)` of `make_dataset`, each keyed by task."""
    x, y, weights = {}, {}, {}
    for task, examples in step.items():
        inputs = [list(ids) for ids, _ in examples]
        targets = [list(labels) for _, labels in examples]
        ones = [[1] * len(row) for row in targets]
        x[task] = {
            "encoder_token_ids": _padded(inputs, pad_token_id, "int32"),
            "encoder_padding_mask": _padded([[1] * len(row) for row in inputs], 0, "int32"),
            "decoder_token_ids": _padded([[decoder_start_id] + row[:-1] for row in targets],
                                         pad_token_id, "int32"),
            "decoder_padding_mask": _padded(ones, 0, "int32"),
        }
        y[task] = _padded(targets, pad_token_id, "int32")
        weights[task] = _padded(ones, 0.0, "float32")
    return x, y, weights


def recorded_dataset(steps: list[dict], preprocessor):
    """A `tf.data.Dataset` of the recorded batches, in their order, for `model.fit`."""
    import tensorflow as tf

    start_ids = preprocessor.decoder_start_ids
    if len(start_ids) != 1:
        raise ValueError(f"recorded batches are in T5's layout: the decoder starts from one "
                         f"id. Received: decoder_start_ids={start_ids}")
    batches = [batch_tensors(step, preprocessor.pad_token_id, start_ids[0]) for step in steps]
    ids = tf.TensorSpec([None, None], tf.int32)
    signature = (
        {task: {key: ids for key in batches[0][0][task]} for task in TASKS},
        {task: ids for task in TASKS},
        {task: tf.TensorSpec([None, None], tf.float32) for task in TASKS},
    )
    return tf.data.Dataset.from_generator(lambda: iter(batches), output_signature=signature)


def example_keys(records, preprocessor) -> set:
    """Each record's token ids as dss-keras's pipeline makes them, in the recorded layout.

    A key is, per task, the tuple `(input_ids, labels)`: what the hook records of an example.
    """
    from dss_keras.data import make_dataset

    dataset, _ = make_dataset(records, preprocessor, batch_size=256, shuffle=False,
                              bucket_boundaries=[])
    keys = set()
    for x, y, _ in dataset.as_numpy_iterator():
        for row in range(len(y["label"])):
            keys.add(tuple(
                (tuple(x[task]["encoder_token_ids"][row][x[task]["encoder_padding_mask"][row] > 0]),
                 tuple(y[task][row][x[task]["decoder_padding_mask"][row] > 0]))
                for task in TASKS))
    return keys


def step_keys(step: dict) -> list:
    """The recorded examples of a step, each as `example_keys` writes a record's tokens."""
    return [tuple((tuple(ids), tuple(labels)) for ids, labels in per_task)
            for per_task in zip(*(step[task] for task in TASKS))]


def official_losses(folder: str | os.PathLike, logged: list | None) -> list[dict]:
    """Their per-step losses from the hook, checked against those their Trainer logged.

    Args:
        folder: The hook's folder.
        logged: `[global_step, loss]` pairs their Trainer logged (`bench_run.py`).

    Returns:
        One `{"loss", "task_losses"}` per step, at full precision.
    """
    rows = _json_lines(Path(folder) / LOSSES)
    logged = logged or []
    if len(logged) != len(rows):
        raise RuntimeError(f"their Trainer logged {len(logged)} losses, the hook saw "
                           f"{len(rows)} steps; logging_steps=1 did not take")
    for (step, value), row in zip(logged, rows):
        if abs(value - row["loss"]) > 0.5 * 10 ** -LOGGED_DECIMALS + 1e-6 * abs(value):
            raise RuntimeError(f"step {step}: their Trainer logged {value}, the hook's loss is "
                               f"{row['loss']}: the hook does not see the loss they train on")
    return rows


def loss_gaps(official: list[float], ours: list[float]) -> dict:
    """Step 1's relative difference, and the largest gap over the steps both sides ran."""
    steps = min(len(official), len(ours))
    gaps = [abs(a - b) for a, b in zip(official[:steps], ours[:steps])]
    worst = max(range(steps), key=gaps.__getitem__)
    return {"steps": steps,
            "step_one_relative": gaps[0] / abs(official[0]),
            "largest_gap": gaps[worst], "largest_gap_step": worst + 1,
            "largest_gap_relative": gaps[worst] / abs(official[worst])}


def print_loss_curves(results: list[dict]) -> None:
    """Per round, the loss after each step on every side that has one, and the gaps."""
    rounds = {}
    for r in results:
        if r.get("step_losses"):
            rounds.setdefault(r["round"], []).append(r)
    for round_number, sides in rounds.items():
        official = next((r for r in sides if r["side"].startswith("official")), None)
        if official is None:
            continue
        ours = [r for r in sides if r is not official]
        title = f", round {round_number}" if len(rounds) > 1 else ""
        print(f"\nloss after each step, from the same weights on the same batches{title}")
        width = max(18, *(len(r["side"]) + 2 for r in sides))
        print(f"{'step':>4s}" + "".join(f"{r['side']:>{width}s}" for r in sides))
        for step in range(len(official["step_losses"])):
            print(f"{step + 1:4d}" + "".join(
                f"{r['step_losses'][step]:{width}.6f}" if step < len(r["step_losses"])
                else f"{'':{width}s}" for r in sides))
        for r in ours:
            gaps = loss_gaps(official["step_losses"], r["step_losses"])
            verdict = "within" if gaps["step_one_relative"] <= STEP_ONE_TOLERANCE else "NOT within"
            print(f"{r['side']}: step 1 {r['step_losses'][0]:.6f} against "
                  f"{official['step_losses'][0]:.6f}, relative difference "
                  f"{gaps['step_one_relative']:.1e} ({verdict} {STEP_ONE_TOLERANCE:.0e}); "
                  f"largest gap over {gaps['steps']} steps {gaps['largest_gap']:.2g} "
                  f"({gaps['largest_gap_relative']:.1e} relative) at step "
                  f"{gaps['largest_gap_step']}")
            if r.get("examples_trained"):
                print(f"  {r['examples_from_our_records']} of the {r['examples_trained']} "
                      f"examples trained are records of dss-keras's pipeline, token for "
                      f"token (the others' teacher outputs it reads otherwise or refuses)")
