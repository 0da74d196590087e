import importlib.util
import os

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention
from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer

from dss_keras import testing
from dss_keras.data import make_dataset
from dss_keras.tf_fast_path import lean_t5
from dss_keras.model import DistillStepByStep
from dss_keras.tf_fast_path.activations import gelu_tanh
from dss_keras.tf_fast_path.lean_feed_forward import feed_forward
from dss_keras.tf_fast_path.lean_t5 import (T5AttentionRecomputingProbabilities, T5LayerNormKeepingInput,
                               T5LayerRecomputingFeedForward, attend, rms_norm,
                               use_lean_t5_layers)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
    keep = tf.ones([2, 3, 8], "bool")
    assert _gradient_ops_not_waiting_for_upstream(
        lambda *inputs: _lean_feed_forward(*inputs, keep=keep), *_feed_forward_specs()) == []


def _feed_forward_specs(width=4, inner=8):
    return [tf.TensorSpec([2, 3, width]), tf.TensorSpec([2, 3, width]), tf.TensorSpec([width]),
            tf.TensorSpec([width, inner]), tf.TensorSpec([width, inner]),
            tf.TensorSpec([inner, width])]


def _lean_feed_forward(x, norm_weight, input_kernel, gate_kernel, output_kernel,
                       activation=gelu_tanh, keep=None, rate=0.25):
    return feed_forward(x, norm_weight, input_kernel, gate_kernel, output_kernel,
                        normalize=lambda x, w: rms_norm(x, w, 1e-6), activation=activation,
                        keep=keep, rate=rate)


def _op_by_op_feed_forward(x, norm_weight, input_kernel, gate_kernel, output_kernel,
                           activation=gelu_tanh, keep=None, rate=0.25):
    """KerasHub's block: T5LayerNorm's, Dense's and Dropout's ops."""
    normed = norm_weight * (x * tf.math.rsqrt(tf.reduce_mean(tf.square(x), -1, keepdims=True)
                                              + 1e-6))
    hidden = activation(tf.matmul(normed, input_kernel))
    if gate_kernel is not None:
        hidden = hidden * tf.matmul(normed, gate_kernel)
    if keep is not None:
        hidden = tf.where(keep, hidden / (1.0 - rate), 0.0)
    return tf.matmul(hidden, output_kernel)


@pytest.mark.parametrize("gated", [True, False])
@pytest.mark.parametrize("activation", [gelu_tanh, tf.nn.relu])
@pytest.mark.parametrize("dropout", [True, False])
def test_feed_forward_has_the_blocks_value_and_gradients(gated, activation, dropout):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, 3, 4)), "float32")
    weights = [tf.constant(rng.normal(1.0, 0.3, 4), "float32"),
               *[tf.constant(rng.normal(size=shape), "float32")
                 * shape[0] ** -0.5 for shape in [(4, 8), (4, 8), (8, 4)]]]
    if not gated:
        weights[2] = None
    keep = tf.constant(rng.random((2, 3, 8)) > 0.25) if dropout else None
    results = []
    for block in (_lean_feed_forward, _op_by_op_feed_forward):
        inputs = [x, *[w for w in weights if w is not None]]
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            y = block(x, *weights, activation=activation, keep=keep)
            loss = tf.reduce_sum(y * tf.cos(y))  # a non-uniform upstream gradient
        results.append([y, *tape.gradient(loss, inputs)])
    assert len(results[0]) == (6 if gated else 5)
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def _feed_forward_kept(block):
    """Shapes of the float tensors the gradient reads that the forward pass computed."""
    forward_ops = []

    @tf.function
    def step(upstream, x, *weights):
        with tf.GradientTape() as tape:
            tape.watch([x, *weights])
            y = block(x, *weights, keep=tf.ones([2, 3, 8], "bool"))
        forward_ops.extend(tf.compat.v1.get_default_graph().get_operations())
        return tape.gradient(y, [x, *weights], output_gradients=upstream)

    graph = step.get_concrete_function(*_feed_forward_specs()).graph
    forward = set(forward_ops)
    return sorted({(tensor.name, tuple(tensor.shape)) for op in graph.get_operations()
                   if op not in forward and op.type not in ("Shape", "Const")
                   for tensor in op.inputs if tensor.op in forward
                   and tensor.dtype == tf.float32 and tensor.op.type != "Placeholder"},
                  key=str)


def test_feed_forward_keeps_only_its_two_projections_for_the_gradient():
    op_by_op = [shape for _, shape in _feed_forward_kept(_op_by_op_feed_forward)]
    # The norm's output; the activation's input and output, the gate, the dropped product.
    assert op_by_op.count((2, 3, 4)) >= 1 and op_by_op.count((2, 3, 8)) >= 4
    assert [shape for _, shape in _feed_forward_kept(_lean_feed_forward)] == [(2, 3, 8)] * 2


def test_attention_does_not_keep_its_probabilities_for_the_gradient():
    assert {"Softmax", "SelectV2"} <= _attention_probabilities_the_gradient_reads(
        T5MultiHeadAttention)  # before and after dropout
    assert _attention_probabilities_the_gradient_reads(T5AttentionRecomputingProbabilities) == {
        "AddV2"}  # the bias (relative positions and mask), one per stack, not per layer


def _t5_backbone(dtype=None, dropout=0.1, gated=True):
    keras.utils.set_random_seed(0)
    return keras_hub.models.T5Backbone(
        vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        key_value_dim=8, dropout=dropout, use_gated_activation=gated,
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
    layers = [*backbone.encoder_transformer_layers, *backbone.decoder_transformer_layers]
    assert len(norms) == 2 * 2 + 2 * 3 + 2 and len(attention) == 2 + 2 * 2 and len(layers) == 4
    assert use_lean_t5_layers(backbone) == len(norms) + len(attention) + len(layers)
    assert all(type(layer) is T5LayerNormKeepingInput for layer in norms)
    assert all(type(layer) is T5AttentionRecomputingProbabilities for layer in attention)
    assert all(type(layer) is T5LayerRecomputingFeedForward for layer in layers)
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


@pytest.mark.parametrize("gated", [True, False])
def test_t5_layers_train_their_feed_forward_block_through_feed_forward(gated, monkeypatch):
    backbone = _t5_backbone(gated=gated)
    want_output, want_gradients = _output_and_gradients(backbone)
    use_lean_t5_layers(backbone)
    calls = []

    def counted(*args, **kwargs):
        calls.append(kwargs["keep"] is not None)
        return feed_forward(*args, **kwargs)

    monkeypatch.setattr(lean_t5, "feed_forward", counted)
    output, gradients = _output_and_gradients(backbone)
    assert calls == [True] * 4  # each layer's block, with its dropout mask
    np.testing.assert_allclose(output, want_output, rtol=1e-5, atol=1e-5)
    for got, want in zip(gradients, want_gradients):
        if want is not None:
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    _output_and_gradients(backbone, training=False)
    backbone.encoder_transformer_layers[0].input_projector.enable_lora(2)
    _output_and_gradients(backbone)
    assert len(calls) == 4 + 3  # not in inference; KerasHub's call for a block with LoRA


def test_use_lean_t5_layers_leaves_other_backbones_alone():
    bart = keras_hub.models.BartBackbone(vocabulary_size=40, num_layers=1, num_heads=2,
                                         hidden_dim=16, intermediate_dim=32,
                                         max_sequence_length=16)
    assert use_lean_t5_layers(bart) == 0


def _lean_kinds(backbone):
    return {type(layer) for layer in backbone._flatten_layers(include_self=False)
            if isinstance(layer, (T5LayerNorm, T5MultiHeadAttention, T5TransformerLayer))}


def test_a_model_saves_keras_hub_layers_and_the_fast_path_makes_them_lean_again(tmp_path):
    """Files name T5's layers as every backend does; lean layers come back for training."""
    import zipfile

    import h5py

    from dss_keras.tf_fast_path.saved_names import LEAN_SAVED_NAMES, saved_layer_class

    model = DistillStepByStep(testing.tiny_seq2seq_lm(), max_input_length=32,
                              max_label_length=4, max_rationale_length=8)
    backbone = model.seq2seq_lm.backbone
    lean = {T5LayerNormKeepingInput, T5AttentionRecomputingProbabilities,
            T5LayerRecomputingFeedForward}
    assert _lean_kinds(backbone) == lean
    model.save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        archive.extract("model.weights.h5", tmp_path)
    names = []
    h5py.File(tmp_path / "model.weights.h5").visit(names.append)
    assert not {saved_layer_class(n.rpartition("/")[2]) for n in names} & LEAN_SAVED_NAMES
    assert _lean_kinds(backbone) == {T5LayerNorm, T5MultiHeadAttention, T5TransformerLayer}
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    for saved, restored in zip(backbone.weights, loaded.seq2seq_lm.backbone.weights):
        np.testing.assert_array_equal(saved.numpy(), restored.numpy())
    for trained in (model, loaded):
        dataset, _ = make_dataset(testing.toy_records(4), trained.preprocessor, batch_size=4)
        trained.compute_task_losses(*next(iter(dataset)))
        assert _lean_kinds(trained.seq2seq_lm.backbone) == lean


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


def test_the_feed_forward_benchmark_times_the_same_computation_on_both_sides(monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "feed_forward_step", os.path.join(REPO, "benchmarks", "feed_forward_step.py"))
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return feed_forward(*args, **kwargs)

    monkeypatch.setattr(lean_t5, "feed_forward", counted)
    seed_state = tf.constant([1, 2], tf.int64)
    for name, tokens, is_decoder in bench.CASES:
        results = []
        for side in (T5TransformerLayer, T5LayerRecomputingFeedForward):
            step, inputs = bench.training_step(bench.make_layer(side, is_decoder), tokens)
            results.append(_flat([g.numpy() for g in step(*inputs, seed_state)]))
        keras_hub, ours = results
        assert np.linalg.norm(ours - keras_hub) <= 1e-5 * np.linalg.norm(keras_hub), name
    assert len(calls) == len(bench.CASES)  # traced once per case, through feed_forward
