"""Rematerialised layers: recomputed in the backward pass, with the same dropout masks."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dss_keras import testing
from dss_keras.tf_fast_path import remat
from dss_keras.backbones import tiny_t5
from dss_keras.config import TrainConfig
from dss_keras.data import make_dataset
from dss_keras.model import DistillStepByStep


@pytest.fixture(scope="module")
def dropout_lm():
    """One T5 with dropout for the module (building another would reseed Keras)."""
    return tiny_t5(proto=testing.toy_vocabulary(), num_layers=2, hidden_dim=32,
                   intermediate_dim=64, num_heads=2, dropout=0.3)


def _model(lm, **options):
    # Unpacked unless asked: each task runs its own encoder and decoder calls.
    options.setdefault("examples_per_row", 1)
    return DistillStepByStep(lm, max_input_length=48, max_label_length=4,
                             max_rationale_length=16, **options)


def _batch(model):
    dataset, _ = make_dataset(testing.toy_records(8), model.preprocessor, batch_size=8,
                              shuffle=False)
    return next(iter(dataset))


def _seed_states(lm):
    return [d.seed_generator.state.numpy().copy() for d in remat.active_dropouts(lm.backbone)]


def _loss_and_gradients(model, batch, seed_states):
    for dropout, state in zip(remat.active_dropouts(model.seq2seq_lm.backbone), seed_states):
        dropout.seed_generator.state.assign(state)
    x, y, w = batch

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss, _ = model.compute_task_losses(x, y, w, training=True)
        return loss, tape.gradient(loss, model.trainable_variables)

    loss, gradients = step()
    return float(loss), [tf.convert_to_tensor(g).numpy() for g in gradients]


@pytest.mark.parametrize("examples_per_row", [1, 4])
def test_recomputation_draws_the_masks_of_the_first_run(dropout_lm, monkeypatch,
                                                        examples_per_row):
    model = _model(dropout_lm, rematerialize=True, examples_per_row=examples_per_row)
    batch, states = _batch(model), _seed_states(dropout_lm)
    loss, gradients = _loss_and_gradients(model, batch, states)
    # The same seeds without recomputation: the activations are stored, as usual.
    monkeypatch.setattr(remat.tf, "recompute_grad", lambda f: f)
    stored_loss, stored_gradients = _loss_and_gradients(model, batch, states)
    assert loss == pytest.approx(stored_loss, rel=1e-6)
    for got, want in zip(gradients, stored_gradients):
        scale = np.abs(want).max() + 1e-12
        np.testing.assert_allclose(got / scale, want / scale, atol=1e-5)
    # Dropout is on: other seeds give another loss.
    other_loss, _ = _loss_and_gradients(model, batch, [s + 1 for s in states])
    assert abs(other_loss - loss) > 1e-4


def test_each_layer_runs_again_in_the_backward_pass_only_when_rematerialised(
        dropout_lm, monkeypatch):
    calls = []
    layer = dropout_lm.backbone.encoder_transformer_layers[1]
    original = type(layer).call
    monkeypatch.setattr(type(layer), "call", lambda self, *a, **k: (
        calls.append(self is layer), original(self, *a, **k))[1])
    for rematerialize, runs in ((False, 1), (True, 2)):
        model = _model(dropout_lm, rematerialize=rematerialize)
        calls.clear()
        x, y, w = _batch(model)
        with tf.GradientTape() as tape:
            loss, _ = model.compute_task_losses(x, y, w, training=True)
        forward = calls.count(True)
        tape.gradient(loss, model.trainable_variables)
        # Once per task forward; once more per task in the backward pass with remat.
        assert (forward, calls.count(True)) == (2, 2 * runs)


def test_a_step_draws_each_layers_base_seed_once(dropout_lm):
    model = _model(dropout_lm, rematerialize=True)
    batch = _batch(model)
    before = _seed_states(dropout_lm)
    _loss_and_gradients(model, batch, before)
    after = _seed_states(dropout_lm)
    moved = [int(a[1] - b[1]) for a, b in zip(after, before)]
    # Every layer's first dropout gives one base seed per task; the replayed ones draw none.
    assert sorted(set(moved)) == [0, 2]


def test_rematerialize_needs_a_t5_model():
    bart = keras.Model()
    with pytest.raises(ValueError, match="needs a T5 model"):
        DistillStepByStep.__new__(DistillStepByStep).__init__(bart, rematerialize=True)


def test_the_config_flag_reaches_the_model(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    TrainConfig.add_flags(parser)
    config = TrainConfig.from_args(parser.parse_args(["--rematerialize", "true"]))
    assert config.rematerialize is True
    with pytest.raises(SystemExit):
        parser.parse_args(["--rematerialize", "maybe"])
    with pytest.raises(ValueError, match="rematerialize"):
        TrainConfig(rematerialize="false")
    from dss_keras.training import build_model

    config = config.replace(vocabulary_size=120, hidden_dim=16, intermediate_dim=32,
                            num_layers=1, num_heads=2, max_input_length=48,
                            max_label_length=4, max_rationale_length=16, examples_per_row=3,
                            alpha=0.3)
    model = build_model(config, testing.toy_records(16), str(tmp_path / "vocabulary.spm"))
    assert model.rematerialize is True
    assert (model.examples_per_row, model.alpha) == (3, 0.3)  # every model field arrives
