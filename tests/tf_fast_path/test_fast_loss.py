"""The fast training path computes the shared loss and its gradients, with less work.

The reference is `DistillStepByStep.compute_loss`, the objective in `keras.ops`
that Keras' own train step trains on every backend (`dss_keras.objective`);
`plain` is the fast path with every option off.
"""

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from dss_keras import backbones, optimizers, testing
from dss_keras.tf_fast_path import packing
from dss_keras.data import make_dataset
from dss_keras.model import DistillStepByStep
from dss_keras.tf_fast_path.seq2seq_parts import Seq2SeqParts
from dss_keras.tf_fast_path.task_losses import packs_rows

FAST_OPTIONS = {
    "gather": dict(logits_at_targets_only=True, shared_encoder_pass=False, examples_per_row=1),
    "shared_encoder": dict(logits_at_targets_only=False, shared_encoder_pass=True,
                           examples_per_row=1),
    "both": dict(logits_at_targets_only=True, shared_encoder_pass=True, examples_per_row=1),
    "remat": dict(logits_at_targets_only=True, shared_encoder_pass=False, rematerialize=True,
                  examples_per_row=1),
    "remat_shared_encoder": dict(logits_at_targets_only=False, shared_encoder_pass=True,
                                 rematerialize=True, examples_per_row=1),
    # Packing (dss_keras.tf_fast_path.packing): 12 examples in rows of up to 4 (3 rows), 5 (3 rows, one
    # shorter) and 12 (one row), with and without rematerialisation; "joint": both tasks'
    # 24 examples in the same rows. Rows and projected tokens are rounded up to multiples
    # of 16 (`pad_to_multiple_of`'s default) but in "exact_lengths".
    "packed_4": dict(examples_per_row=4),
    "packed_4_exact_lengths": dict(examples_per_row=4, pad_to_multiple_of=1),
    "packed_5_remat": dict(examples_per_row=5, rematerialize=True),
    "packed_12": dict(examples_per_row=12, logits_at_targets_only=False),
    "packed_2_joint": dict(examples_per_row=2, shared_encoder_pass=True),
    "packed_5_joint_remat": dict(examples_per_row=5, shared_encoder_pass=True,
                                 rematerialize=True),
}
PLAIN = dict(logits_at_targets_only=False, shared_encoder_pass=False, rematerialize=False,
             examples_per_row=1)


def _model(mode="distill_step_by_step", lm=None, **options):
    lm = lm or testing.tiny_seq2seq_lm(hidden_dim=32, num_layers=2)
    return DistillStepByStep(lm, mode=mode, max_input_length=48, max_label_length=4,
                             max_rationale_length=16, **options)


def _batch(model, mode="distill_step_by_step", **kwargs):
    records = testing.toy_records(12)
    # Some examples without a rationale: their rationale weights are all zero.
    records = [r if i % 4 else dataclasses.replace(r, rationale=None)
               for i, r in enumerate(records)]
    dataset, _ = make_dataset(records, model.preprocessor, mode=mode, batch_size=12,
                              shuffle=False, **kwargs)
    return next(iter(dataset))


def _shared_loss(model, x, y, w):
    """The objective every backend trains: `compute_loss` on the whole model's logits."""
    return model.compute_loss(x, y, model(x, training=False), w, training=False)


def _plain_and_fast(options, mode="distill_step_by_step"):
    """Two models around one seq2seq LM (so, the same weights)."""
    plain = _model(mode, **PLAIN)
    return plain, _model(mode, lm=plain.seq2seq_lm, **options)


def test_parts_give_the_logits_of_the_whole_model():
    lm = testing.tiny_seq2seq_lm(num_layers=2)
    model = DistillStepByStep(lm, max_input_length=48, max_label_length=4,
                              max_rationale_length=16)
    x, _, _ = _batch(model)
    parts = Seq2SeqParts.of(lm)
    for task in ("label", "rationale"):
        inputs = x[task]
        whole = lm(inputs, training=False)
        np.testing.assert_allclose(parts.vocabulary_logits(parts.hidden_states(inputs)), whole,
                                   atol=1e-5)
        encoded = parts.encode(inputs["encoder_token_ids"], inputs["encoder_padding_mask"])
        decoded = parts.decode(inputs["decoder_token_ids"], inputs["decoder_padding_mask"],
                               encoded, inputs["encoder_padding_mask"])
        np.testing.assert_allclose(parts.vocabulary_logits(decoded), whole, atol=1e-5)


def test_parts_of_other_models_are_unknown_and_they_train_whole():
    class Other(keras.Model):
        pass

    assert Seq2SeqParts.of(Other()) is None


@pytest.mark.parametrize("name", sorted(FAST_OPTIONS))
@pytest.mark.parametrize("mode", ["distill_step_by_step", "standard"])
def test_fast_loss_equals_the_plain_loss(name, mode):
    plain, fast = _plain_and_fast(FAST_OPTIONS[name], mode)
    x, y, w = _batch(plain, mode)
    plain_loss, plain_stats = plain.compute_task_losses(x, y, w)
    fast_loss, fast_stats = fast.compute_task_losses(x, y, w)
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-5)
    np.testing.assert_allclose(fast_loss, _shared_loss(plain, x, y, w), rtol=1e-5)
    assert set(fast_stats) == set(plain_stats) == set(plain.tasks)
    for task in plain.tasks:
        for got, want in zip(fast_stats[task], plain_stats[task]):
            np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("name", sorted(FAST_OPTIONS))
def test_fast_path_gradients_are_the_shared_loss_gradients(name):
    plain, fast = _plain_and_fast(FAST_OPTIONS[name])
    x, y, w = _batch(plain)

    def gradients(model, loss_of):
        with tf.GradientTape() as tape:
            loss = loss_of(model)  # dropout is 0
        return [tf.convert_to_tensor(g) for g in
                tape.gradient(loss, model.trainable_variables)]

    plain_gradients = gradients(plain, lambda model: _shared_loss(model, x, y, w))
    fast_gradients = gradients(
        fast, lambda model: model.compute_task_losses(x, y, w, training=True)[0])
    assert len(plain_gradients) == len(fast_gradients) > 10
    for variable, got, want in zip(plain.trainable_variables, fast_gradients, plain_gradients):
        scale = float(tf.reduce_max(tf.abs(want))) + 1e-12
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-5, err_msg=variable.path)
    # The gradients are not trivially zero.
    assert sum(float(tf.reduce_sum(tf.abs(g))) for g in plain_gradients) > 1e-3


def _projected_rows(fast, monkeypatch):
    """The batch, and the rows of each projection onto the vocabulary in its loss."""
    x, y, w = _batch(fast)
    rows = []
    project = fast.seq2seq_parts.vocabulary_logits
    monkeypatch.setattr(fast.seq2seq_parts, "vocabulary_logits",
                        lambda hidden: rows.append(hidden.shape[0]) or project(hidden))
    fast.compute_task_losses(x, y, w)
    return w, rows


def test_gathering_projects_only_real_target_tokens(monkeypatch):
    _, fast = _plain_and_fast(FAST_OPTIONS["both"])
    w, rows = _projected_rows(fast, monkeypatch)
    assert rows == [int(tf.reduce_sum(w["label"])), int(tf.reduce_sum(w["rationale"]))]
    assert rows[1] < w["rationale"].shape[0] * w["rationale"].shape[1]


@pytest.mark.parametrize("multiple", [1, 16])
def test_packed_tasks_share_one_projection_of_their_real_target_tokens(monkeypatch, multiple):
    # One product for the LM head's gradient, not one per task added up afterwards; its
    # rows rounded up to the multiple (a bounded set of shapes).
    _, fast = _plain_and_fast(dict(FAST_OPTIONS["packed_2_joint"], pad_to_multiple_of=multiple))
    assert packs_rows(fast)
    w, rows = _projected_rows(fast, monkeypatch)
    real = int(tf.reduce_sum(w["label"])) + int(tf.reduce_sum(w["rationale"]))
    assert rows == [packing.round_up(real, multiple)]
    assert multiple == 1 or real % multiple  # the batch needs the rounding


def test_fast_and_plain_fits_train_the_same_weights():
    plain, fast = _plain_and_fast(FAST_OPTIONS["both"])
    start = plain.get_weights()
    dataset, _ = make_dataset(testing.toy_records(24), plain.preprocessor, batch_size=8,
                              shuffle=False)
    trained = {}
    for name, model in (("plain", plain), ("fast", fast)):
        model.set_weights(start)
        # dss_keras' AdamW: Keras' sums sparse gradient pieces as if they were rows.
        model.compile(optimizer=optimizers.AdamW(1e-2))
        history = model.fit(dataset, epochs=2, verbose=0).history
        trained[name] = history["loss"], model.get_weights()
    np.testing.assert_allclose(trained["fast"][0], trained["plain"][0], rtol=1e-4)
    moved = max(np.abs(w - s).max() for w, s in zip(trained["plain"][1], start))
    assert moved > 1e-3
    # Adam turns float-rounding differences of near-zero gradients (rare embedding rows)
    # into up to a few percent of a step (lr 1e-2); the gradient test above is the strict one.
    for got, want in zip(trained["fast"][1], trained["plain"][1]):
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_fast_path_options_survive_saving(tmp_path):
    model = _model(logits_at_targets_only=False, shared_encoder_pass=True, rematerialize=True,
                   examples_per_row=1)
    model.save(tmp_path / "model.keras")
    restored = keras.saving.load_model(tmp_path / "model.keras")
    assert (restored.logits_at_targets_only, restored.shared_encoder_pass,
            restored.rematerialize, restored.examples_per_row) == (False, True, True, 1)
    _model(examples_per_row=3).save(tmp_path / "packed.keras")
    assert keras.saving.load_model(tmp_path / "packed.keras").examples_per_row == 3


def test_bounded_shapes_pad_to_few_lengths_and_change_no_loss():
    model = _model()
    x, y, w = _batch(model)
    bx, by, bw = _batch(model, bounded_shapes=True)
    # Both tasks' encoder inputs (one text) get one length: fewer shapes to compile.
    assert bx["label"]["encoder_token_ids"].shape == bx["rationale"]["encoder_token_ids"].shape
    for task in ("label", "rationale"):
        assert bx[task]["encoder_token_ids"].shape[1] in (8, 16, 32, 48)
        limit = 4 if task == "label" else 16
        assert bx[task]["decoder_token_ids"].shape[1] in sorted({8, limit} & set(range(limit + 1)))
        for key in ("encoder_padding_mask", "decoder_padding_mask"):
            assert int(tf.reduce_sum(bx[task][key])) == int(tf.reduce_sum(x[task][key]))
        assert float(tf.reduce_sum(bw[task])) == float(tf.reduce_sum(w[task]))
    np.testing.assert_allclose(model.compute_task_losses(bx, by, bw)[0],
                               model.compute_task_losses(x, y, w)[0], rtol=1e-5)


def test_cached_tokens_give_the_same_batches_in_the_same_order():
    model = _model()
    records = testing.toy_records(40)
    batches = {}
    for cache in (True, False):
        dataset, _ = make_dataset(records, model.preprocessor, batch_size=8, seed=5,
                                  repeat=True, cache_tokens=cache)
        batches[cache] = list(dataset.take(12).as_numpy_iterator())  # 2.4 passes
    for cached, fresh in zip(batches[True], batches[False]):
        tf.nest.map_structure(np.testing.assert_array_equal, cached, fresh)


@pytest.mark.slow
def test_a_jit_compiled_model_gives_the_plain_loss_on_bounded_batches():
    plain, fast = _plain_and_fast(FAST_OPTIONS["gather"])
    dataset, _ = make_dataset(testing.toy_records(16), plain.preprocessor, batch_size=8,
                              shuffle=False, bounded_shapes=True)
    plain.compile(optimizer="adam", jit_compile=False)
    fast.compile(optimizer="adam", jit_compile=True)  # XLA: every position is projected
    want = plain.evaluate(dataset, verbose=0, return_dict=True)
    got = fast.evaluate(dataset, verbose=0, return_dict=True)
    for name in ("loss", "label_loss", "rationale_loss"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5)


def test_packed_path_in_mixed_bfloat16_computes_the_plain_loss(monkeypatch):
    """bfloat16 (CPUs with AVX-512 BF16 or AMX, GPUs, TPUs): packing still keeps examples apart."""
    lm = backbones.tiny_t5(proto=testing.toy_vocabulary(), hidden_dim=32, num_layers=2,
                           num_heads=2, intermediate_dim=64, dtype="mixed_bfloat16")
    plain = _model(lm=lm, **PLAIN)
    fast = _model(lm=lm, examples_per_row=4, shared_encoder_pass=True)  # the default's packing
    x, y, w = _batch(plain)
    plain_loss, plain_stats = plain.compute_task_losses(x, y, w)
    fast_loss, fast_stats = fast.compute_task_losses(x, y, w)
    assert lm.backbone.compute_dtype == "bfloat16" and packs_rows(fast)
    # bfloat16 keeps 8 bits of mantissa, and the packed rows' sums round differently (about
    # 4e-5 of the loss here); an example seeing another moves it by more (below).
    np.testing.assert_allclose(fast_loss, plain_loss, rtol=1e-3)
    for task in plain.tasks:  # each task's summed token loss
        np.testing.assert_allclose(fast_stats[task][0], plain_stats[task][0], rtol=1e-3)
    with monkeypatch.context() as patch:  # every token of a row sees the whole row
        patch.setattr(packing, "_same_example", lambda query, key: tf.ones(
            [tf.shape(query)[0], tf.shape(query)[1], tf.shape(key)[1]], tf.bool))
        leaky_loss, _ = fast.compute_task_losses(x, y, w)
    assert abs(float(leaky_loss) / float(plain_loss) - 1.0) > 1e-3
