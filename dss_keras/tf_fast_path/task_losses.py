"""Each task's token losses, computed the fast way on TensorFlow.

`DistillStepByStep.compute_task_losses` reduces, per task, the cross-entropy
of every real target token. Calling the seq2seq LM whole on each task's padded
batch gives those losses; this module gives the same values (and gradients,
`tests/tf_fast_path/test_fast_loss.py`) with less work:

- packed rows (`examples_per_row` > 1, T5, not under XLA): several examples,
  of both tasks, share a row with attention masks that keep them apart, so the
  encoder and decoder do almost no work on padding (`packing`);
- only the decoder states of real target tokens are projected onto the
  vocabulary, both tasks' in one product (`logits_at_targets_only`);
- with `shared_encoder_pass`, both tasks' inputs go through the encoder as one
  batch;
- with `rematerialize`, each transformer layer is computed again in the
  backward pass (`remat`).

The model is called in pieces for this (`seq2seq_parts`); a model that cannot
be split (neither T5 nor BART) runs whole.
"""

from __future__ import annotations

import tensorflow as tf

from dss_keras.tf_fast_path.packing import pack_task, round_up, stack_examples
from dss_keras.tf_fast_path.token_cross_entropy import sparse_cross_entropy


def token_losses(logits, targets):
    """Each target token's cross-entropy, and 1.0 where the argmax is the target."""
    logits, targets = tf.cast(logits, "float32"), tf.cast(targets, "int32")
    losses = sparse_cross_entropy(logits, targets)
    correct = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), targets), "float32")
    return losses, correct


def packs_rows(model) -> bool:
    """Whether `model`'s batches are packed (`examples_per_row`): T5, and not under XLA."""
    parts = model.seq2seq_parts
    return (model.examples_per_row > 1 and parts is not None and parts.can_split_encoder
            and not model.jit_compile)


def task_token_losses(model, x, y, sample_weight, training) -> dict:
    """Per task `(token losses, correct tokens, weights)`, at real targets where it can.

    Args:
        model: A `DistillStepByStep`.
        x, y, sample_weight: A batch of `dss_keras.data.make_dataset`, keyed
            by task.
        training: Whether dropout is on.

    Returns:
        For each of `model.tasks`, three tensors of one shape: the token
        losses, 1.0 where the argmax is right, and the tokens' weights (0 for
        padding, where padding is kept).
    """
    if packs_rows(model):
        return _packed_token_losses(model, x, y, sample_weight, training)
    parts = model.seq2seq_parts
    pieces = model.logits_at_targets_only or model.shared_encoder_pass or model.rematerialize
    if parts is None or not pieces:
        return {task: token_losses(model.seq2seq_lm(x[task], training=training), y[task])
                + (sample_weight[task],) for task in model.tasks}
    gather = model.logits_at_targets_only and not model.jit_compile
    outputs = {}
    for task, hidden in _decoder_hidden_states(model, x, training).items():
        targets, weights = y[task], sample_weight[task]
        if gather:
            # XLA wants static shapes, so a jit-compiled step projects every position.
            positions = tf.where(weights > 0)
            hidden = tf.gather_nd(hidden, positions)
            targets = tf.gather_nd(targets, positions)
            weights = tf.gather_nd(weights, positions)
        outputs[task] = token_losses(parts.vocabulary_logits(hidden), targets) + (weights,)
    return outputs


def _decoder_hidden_states(model, x, training) -> dict:
    """Per task, the decoder's hidden states of padded (unpacked) rows.

    With `shared_encoder_pass` and both tasks, the `predict:` and `explain:`
    rows go through the encoder as one batch (padded to the longer of the two)
    and each task's decoder reads its own rows.
    """
    parts, remat, tasks = model.seq2seq_parts, model.rematerialize, model.tasks
    if not (model.shared_encoder_pass and parts.can_split_encoder and len(tasks) == 2):
        return {task: parts.hidden_states(x[task], training=training, rematerialize=remat)
                for task in tasks}
    keys = ("encoder_token_ids", "encoder_padding_mask")
    stacked = stack_examples([{key: x[task][key] for key in keys} for task in tasks])
    padding_mask = stacked["encoder_padding_mask"]
    outputs = parts.encode(stacked["encoder_token_ids"], padding_mask, training=training,
                           rematerialize=remat)
    rows = tf.shape(x[tasks[0]]["encoder_token_ids"])[0]
    hidden = {}
    for index, task in enumerate(tasks):
        own = slice(index * rows, (index + 1) * rows)
        hidden[task] = parts.decode(
            x[task]["decoder_token_ids"], x[task]["decoder_padding_mask"],
            outputs[own], padding_mask[own], training=training, rematerialize=remat)
    return hidden


def _packed_token_losses(model, x, y, sample_weight, training) -> dict:
    """`task_token_losses` of packed rows, at the real target tokens.

    With `shared_encoder_pass` both tasks' examples are packed together (one
    encoder and one decoder call, and one projection of both tasks' target
    tokens onto the vocabulary), else each task's apart.
    """
    parts, remat, tasks = model.seq2seq_parts, model.rematerialize, model.tasks
    multiple = model.pad_to_multiple_of
    together = model.shared_encoder_pass and len(tasks) == 2
    groups = [tasks] if together else [(task,) for task in tasks]
    outputs = {}
    for group in groups:
        packed = pack_task(stack_examples([x[task] for task in group]),
                           model.examples_per_row, multiple)
        encoded = parts.encode(packed.encoder_token_ids, None, training=training,
                               rematerialize=remat, attention_mask=packed.encoder_attention_mask)
        hidden = parts.decode(packed.decoder_token_ids, None, encoded, None,
                              training=training, rematerialize=remat,
                              attention_mask=packed.decoder_attention_mask,
                              encoder_attention_mask=packed.cross_attention_mask)
        first = tf.constant(0, tf.int64)  # where the task's examples start in the group
        states, targets, weights = [], [], []
        for task in group:
            positions = tf.where(sample_weight[task] > 0)
            states.append(packed.decoder_states_at(hidden, positions + [[first, 0]]))
            first += tf.shape(sample_weight[task], out_type=tf.int64)[0]
            targets.append(tf.gather_nd(y[task], positions))
            weights.append(tf.gather_nd(sample_weight[task], positions))
        # One projection: the LM head's gradient is one product, not one per task.
        sizes = [tf.shape(t)[0] for t in targets]
        states, targets = tf.concat(states, 0), tf.concat(targets, 0)
        real = tf.shape(targets)[0]
        extra = round_up(real, multiple) - real
        losses, correct = token_losses(
            parts.vocabulary_logits(tf.pad(states, [[0, extra], [0, 0]])),
            tf.pad(targets, [[0, extra]]))
        losses, correct = losses[:real], correct[:real]
        for task, task_losses, task_correct, task_weights in zip(
                group, tf.split(losses, sizes), tf.split(correct, sizes), weights):
            outputs[task] = (task_losses, task_correct, task_weights)
    return outputs
