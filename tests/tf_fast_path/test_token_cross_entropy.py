import numpy as np
import pytest
import tensorflow as tf

from dss_keras.tf_fast_path.token_cross_entropy import sparse_cross_entropy


def _loss_and_gradient(function, logits, targets, weights):
    with tf.GradientTape() as tape:
        tape.watch(logits)
        losses = function(logits, targets)
        # Non-uniform upstream gradients, so that a wrong scale of any row shows.
        total = tf.reduce_sum(losses * weights)
    return losses.numpy(), tape.gradient(total, logits).numpy()


def _tensorflow(logits, targets):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits)


@pytest.mark.parametrize("tokens, vocabulary, spread", [(7, 11, 1.0), (33, 500, 8.0),
                                                        (4, 32128, 3.0)])
def test_loss_and_gradient_are_tensorflows(tokens, vocabulary, spread):
    rng = np.random.default_rng(tokens)
    logits = tf.constant(rng.normal(0.0, spread, (tokens, vocabulary)), "float32")
    targets = tf.constant(rng.integers(0, vocabulary, tokens), "int32")
    weights = tf.constant(rng.uniform(0.1, 2.0, tokens), "float32")
    got = _loss_and_gradient(sparse_cross_entropy, logits, targets, weights)
    want = _loss_and_gradient(_tensorflow, logits, targets, weights)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    assert np.abs(want[1]).max() > 0.05  # the gradients compared are not all near zero


def test_any_leading_shape_is_tensorflows():
    rng = np.random.default_rng(3)
    logits = tf.constant(rng.normal(0.0, 2.0, (2, 3, 17)), "float32")
    targets = tf.constant(rng.integers(0, 17, (2, 3)), "int32")
    weights = tf.constant(rng.uniform(0.1, 2.0, (2, 3)), "float32")
    got = _loss_and_gradient(sparse_cross_entropy, logits, targets, weights)
    want = _loss_and_gradient(_tensorflow, logits, targets, weights)
    assert got[0].shape == (2, 3)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


def test_large_logits_neither_overflow_nor_lose_the_target():
    logits = tf.constant([[1e4, 0.0, -1e4], [50.0, 200.0, 100.0]])
    targets = tf.constant([1, 1], "int64")
    got = _loss_and_gradient(sparse_cross_entropy, logits, targets, tf.ones([2]))
    want = _loss_and_gradient(_tensorflow, logits, targets, tf.ones([2]))
    np.testing.assert_allclose(got[0], [1e4, 0.0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], atol=1e-6)
    assert np.isfinite(got[1]).all()


def test_no_tokens_give_no_losses_and_a_zero_gradient():
    logits = tf.zeros([0, 9])
    losses, gradient = _loss_and_gradient(sparse_cross_entropy, logits,
                                          tf.zeros([0], "int32"), tf.zeros([0]))
    assert losses.shape == (0,) and gradient.shape == (0, 9)


def test_traced_step_runs_no_fused_cross_entropy_kernel():
    @tf.function
    def step(logits, targets):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            loss = tf.reduce_sum(sparse_cross_entropy(logits, targets))
        return tape.gradient(loss, logits)

    specs = tf.TensorSpec([None, 5]), tf.TensorSpec([None], "int32")
    op_types = {op.type for op in step.get_concrete_function(*specs).graph.get_operations()}
    assert "SparseSoftmaxCrossEntropyWithLogits" not in op_types
    assert "Exp" in op_types


def _loss_and_update_benchmark():
    import importlib.util
    import os
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    benchmarks = os.path.join(repo, "benchmarks")
    sys.path.insert(0, benchmarks)  # the script imports its neighbours
    spec = importlib.util.spec_from_file_location(
        "loss_and_update_step", os.path.join(benchmarks, "loss_and_update_step.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_benchmark_times_the_same_computation_on_both_sides():
    bench = _loss_and_update_benchmark()
    seed_state = tf.constant([1, 2], tf.int64)
    cases = [bench.cross_entropy_steps(24, 300),
             bench.update_steps(dict(vocabulary_size=50, num_layers=1, num_heads=2, hidden_dim=8,
                                     intermediate_dim=16, key_value_dim=4, dropout=0.1))]
    for steps in cases:
        results = []
        for step, inputs in steps.values():
            for _ in range(3):  # the updates: three steps of each optimizer
                outputs = step(*inputs, seed_state)
            results.append(np.concatenate([np.ravel(o.numpy()) for o in outputs]))
        plain, ours = results
        np.testing.assert_allclose(ours, plain, rtol=1e-5, atol=1e-7)
        assert np.abs(plain).max() > 0.01
