import importlib.util
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention

from dss_keras import testing
from dss_keras.model import DistillStepByStep
from dss_keras.activations import gelu_tanh
from dss_keras.lean_t5 import (T5AttentionRecomputingProbabilities, T5LayerNormKeepingInput,
                               attend, rms_norm, use_lean_t5_layers)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _value_and_gradients(layer_class, x, weight):
    layer = layer_class(epsilon=1e-6)
    layer.build(x.shape)
    layer.weight.assign(weight)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        # A non-uniform upstream gradient, so that a wrong term anywhere shows.
        loss = tf.reduce_sum(y * tf.cos(y))
    return [y.numpy(), *[tf.convert_to_tensor(g).numpy()
                         for g in tape.gradient(loss, [x, layer.weight])]]


@pytest.mark.parametrize("shape", [(16,), (3, 16), (2, 5, 16)])
def test_rms_norm_has_t5_layer_norm_value_and_gradients(shape):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(0.0, 3.0, shape), "float32")
    weight = tf.constant(rng.normal(1.0, 0.5, shape[-1:]), "float32")
    got = _value_and_gradients(T5LayerNormKeepingInput, x, weight)
    want = _value_and_gradients(T5LayerNorm, x, weight)
    for name, g, w in zip(["value", "x gradient", "weight gradient"], got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=name)
        assert np.abs(w).max() > 0.5, name  # the comparison covers real values


def _forward_tensors_the_gradient_reads(norm):
    """The producers of the `[4, 8]` float forward tensors that the backward pass reads."""
    forward_ops = []

    @tf.function
    def step(x, weight):
        with tf.GradientTape() as tape:
            tape.watch([x, weight])
            y = norm(x, weight)
        forward_ops.extend(tf.compat.v1.get_default_graph().get_operations())
        return tape.gradient(y, [x, weight])

    graph = step.get_concrete_function(tf.TensorSpec([4, 8], tf.float32),
                                       tf.TensorSpec([8], tf.float32)).graph
    forward = set(forward_ops)
    return {tensor.op.type for op in graph.get_operations() if op not in forward
            for tensor in op.inputs
            if tensor.op in forward and tensor.dtype == tf.float32 and tensor.shape == (4, 8)}


def test_rms_norm_keeps_only_its_input_for_the_gradient():
    def keras_hub_norm(x, weight):  # T5LayerNorm's own call, on a given weight
        layer = T5LayerNorm(epsilon=1e-6)
        layer.weight = weight
        return layer.call(x)

    plain = _forward_tensors_the_gradient_reads(keras_hub_norm)
    assert "Placeholder" in plain and len(plain) >= 2  # x and the normalised values
    kept = _forward_tensors_the_gradient_reads(lambda x, weight: rms_norm(x, weight, 1e-6))
    assert kept == {"Placeholder"}  # x alone


def _attention_probabilities_the_gradient_reads(layer_class):
    """Producers of `[batch, heads, queries, keys]` float tensors the backward pass reads."""
    layer = layer_class(is_decoder=False, hidden_dim=16, key_value_dim=4, num_heads=3,
                        dropout=0.1, use_relative_attention_bias=True)
    layer.build((2, 5, 16))
    forward_ops = []

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            output, _, _ = layer(x, mask=tf.ones((2, 5, 5), "bool"), training=True)
        forward_ops.extend(tf.compat.v1.get_default_graph().get_operations())
        return tape.gradient(output, [x, *layer.trainable_variables])

    graph = step.get_concrete_function(tf.TensorSpec([2, 5, 16], tf.float32)).graph
    forward = set(forward_ops)
    return {tensor.op.type for op in graph.get_operations() if op not in forward
            for tensor in op.inputs
            if tensor.op in forward and tensor.dtype == tf.float32 and tensor.shape == (2, 3, 5, 5)}


def _gradient_ops_not_waiting_for_upstream(function, output_spec, *specs):
    """The gradient's ops that read a forward tensor but do not depend on the upstream gradient.

    TensorFlow runs an op as soon as its inputs exist: such an op would run in the forward
    pass and what it computes would be held until the backward pass reads it.
    """
    forward_ops = []

    @tf.function
    def step(upstream, *inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            output = function(*inputs)
        forward_ops.extend(tf.compat.v1.get_default_graph().get_operations())
        return tape.gradient(output, inputs, output_gradients=upstream)

    graph = step.get_concrete_function(output_spec, *specs).graph
    forward = set(forward_ops)
    upstream = graph.inputs[0].op
    waits = {upstream: True}

    def waits_for_upstream(op):
        if op not in waits:
            waits[op] = False  # (no cycles in a graph without loops)
            waits[op] = any(waits_for_upstream(i.op) for i in op.inputs) or any(
                waits_for_upstream(c) for c in op.control_inputs)
        return waits[op]

    return [op.type for op in graph.get_operations()
            if op not in forward and op is not upstream and op.type not in ("Shape", "Const")
            and any(t.op in forward for t in op.inputs) and not waits_for_upstream(op)]


def test_recomputations_wait_for_the_upstream_gradient():
    # rms_norm multiplies `x` again, attend computes the probabilities again, gelu_tanh its
    # tanh: each only once the upstream gradient has arrived.
    assert _gradient_ops_not_waiting_for_upstream(
        lambda x, w: rms_norm(x, w, 1e-6), tf.TensorSpec([4, 8]),
        tf.TensorSpec([4, 8]), tf.TensorSpec([8])) == []
    query, key = tf.TensorSpec([2, 5, 3, 4]), tf.TensorSpec([2, 6, 3, 4])
    assert _gradient_ops_not_waiting_for_upstream(
        lambda q, k, v, b: attend(q, k, v, b), query, query, key, key,
        tf.TensorSpec([1, 3, 5, 6])) == []
    assert _gradient_ops_not_waiting_for_upstream(
        gelu_tanh, tf.TensorSpec([4, 8]), tf.TensorSpec([4, 8])) == []


def test_attention_does_not_keep_its_probabilities_for_the_gradient():
    assert {"Softmax", "SelectV2"} <= _attention_probabilities_the_gradient_reads(
        T5MultiHeadAttention)  # before and after dropout
    assert _attention_probabilities_the_gradient_reads(T5AttentionRecomputingProbabilities) == {
        "AddV2"}  # the bias (relative positions and mask), one per stack, not per layer


def _t5_backbone(dtype=None, dropout=0.1):
    keras.utils.set_random_seed(0)
    return keras_hub.models.T5Backbone(
        vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        key_value_dim=8, dropout=dropout, use_gated_activation=True,
        tie_embedding_weights=False, dtype=dtype)


def _output_and_gradients(backbone, training=True):
    """Decoder output and gradients with dropout on, the same masks at each call."""
    rng = np.random.default_rng(1)
    inputs = {"encoder_token_ids": rng.integers(3, 40, (2, 7)),
              "encoder_padding_mask": np.array([[1] * 7, [1] * 4 + [0] * 3], "int32"),
              "decoder_token_ids": rng.integers(3, 40, (2, 5)),
              "decoder_padding_mask": np.array([[1] * 5, [1] * 3 + [0] * 2], "int32")}
    seed_states = [v for v in backbone.non_trainable_variables if "seed_generator" in v.path]
    for state in seed_states:  # every call draws the same dropout masks
        state.assign(tf.zeros_like(state) + 7)
    with tf.GradientTape() as tape:
        out = tf.cast(backbone(inputs, training=training)["decoder_sequence_output"], "float32")
        loss = tf.reduce_sum(out * tf.sin(out))
    gradients = tape.gradient(loss, backbone.trainable_variables)
    # The output projection is not used for the decoder's states: no gradient (None).
    return out.numpy(), [None if g is None else tf.convert_to_tensor(g).numpy()
                         for g in gradients]


def _flat(gradients):
    return np.concatenate([g.ravel() for g in gradients if g is not None])


@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
def test_lean_t5_layers_leave_outputs_gradients_and_config_alone(dtype):
    # In bfloat16 without dropout: its masks come from bfloat16 numbers, other masks than
    # those of the float32 reference below.
    dropout = 0.1 if dtype is None else 0.0
    backbone = _t5_backbone(dtype, dropout)
    # Norm weights away from 1, so that a wrong weight gradient would show.
    for variable in backbone.trainable_variables:
        if "layer_norm" in variable.path:
            variable.assign(np.random.default_rng(2).normal(1.0, 0.3, variable.shape))
    want_output, want_gradients = _output_and_gradients(backbone)
    config, names = backbone.get_config(), [v.path for v in backbone.weights]
    if dropout:
        assert np.abs(_output_and_gradients(backbone, training=False)[0] - want_output).max() > 0.1

    norms = [layer for layer in backbone._flatten_layers(include_self=False)
             if isinstance(layer, T5LayerNorm)]
    attention = [layer for layer in backbone._flatten_layers(include_self=False)
                 if isinstance(layer, T5MultiHeadAttention)]
    assert len(norms) == 2 * 2 + 2 * 3 + 2 and len(attention) == 2 + 2 * 2
    assert use_lean_t5_layers(backbone) == len(norms) + len(attention)
    assert all(type(layer) is T5LayerNormKeepingInput for layer in norms)
    assert all(type(layer) is T5AttentionRecomputingProbabilities for layer in attention)
    output, gradients = _output_and_gradients(backbone)
    assert len(gradients) == len(want_gradients) > 10
    assert [g is None for g in gradients] == [g is None for g in want_gradients]
    assert sum(want is not None for want in want_gradients) > 10
    if dtype is None:  # float rounding: the dropout scale multiplies the values here
        np.testing.assert_allclose(output, want_output, rtol=1e-5, atol=1e-5)
        for got, want in zip(gradients, want_gradients):
            if want is not None:
                np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    else:
        # bfloat16 rounds each of them differently, so outputs and gradients are held to the
        # float32 ones of the same weights: as close as KerasHub's layers.
        exact = _t5_backbone(dropout=dropout)
        exact.set_weights(backbone.get_weights())
        exact_output, exact_gradients = _output_and_gradients(exact)
        for got, keras_hub, want in [
                (output, want_output, exact_output),
                (_flat(gradients), _flat(want_gradients), _flat(exact_gradients))]:
            error = np.linalg.norm(got - want) / np.linalg.norm(want)
            keras_hub_error = np.linalg.norm(keras_hub - want) / np.linalg.norm(want)
            assert 0 < error <= 1.5 * keras_hub_error < 0.1, (error, keras_hub_error)
    assert backbone.get_config() == config and [v.path for v in backbone.weights] == names
    assert use_lean_t5_layers(backbone) == 0  # nothing left to change


def test_use_lean_t5_layers_leaves_other_backbones_alone():
    bart = keras_hub.models.BartBackbone(vocabulary_size=40, num_layers=1, num_heads=2,
                                         hidden_dim=16, intermediate_dim=32,
                                         max_sequence_length=16)
    assert use_lean_t5_layers(bart) == 0


def _lean_kinds(backbone):
    return {type(layer) for layer in backbone._flatten_layers(include_self=False)
            if isinstance(layer, (T5LayerNorm, T5MultiHeadAttention))}


def test_distill_step_by_step_puts_lean_layers_into_a_t5_again_when_loaded(tmp_path):
    model = DistillStepByStep(testing.tiny_seq2seq_lm(), max_input_length=32,
                              max_label_length=4, max_rationale_length=8)
    backbone = model.seq2seq_lm.backbone
    lean = {T5LayerNormKeepingInput, T5AttentionRecomputingProbabilities}
    assert _lean_kinds(backbone) == lean
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert _lean_kinds(loaded.seq2seq_lm.backbone) == lean  # put in again when rebuilt
    for saved, restored in zip(backbone.weights, loaded.seq2seq_lm.backbone.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())


def test_the_attention_benchmark_times_the_same_computation_on_both_sides():
    spec = importlib.util.spec_from_file_location(
        "attention_step", os.path.join(REPO, "benchmarks", "attention_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    seed_state = tf.constant([1, 2], tf.int64)
    for name, queries, keys, is_decoder in bench.CASES:
        results = []
        for side in (T5MultiHeadAttention, T5AttentionRecomputingProbabilities):
            step, inputs = bench.training_step(bench.make_layer(side, keys, is_decoder),
                                               queries, keys)
            results.append(_flat([g.numpy() for g in step(*inputs, seed_state)]))
        keras_hub, ours = results
        assert np.linalg.norm(ours - keras_hub) <= 1e-5 * np.linalg.norm(keras_hub), name
