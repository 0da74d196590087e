import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from dss_keras import testing
from dss_keras.tf_fast_path.activations import gelu_tanh, use_gelu_tanh
from dss_keras.model import DistillStepByStep


def _value_and_gradient(activation, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = activation(x)
        # A non-uniform upstream gradient, so that a wrong slope anywhere shows.
        loss = tf.reduce_sum(y * tf.cos(x))
    return y.numpy(), tape.gradient(loss, x).numpy()


def test_gelu_tanh_has_keras_tanh_gelu_value_and_gradient():
    x = tf.constant(np.concatenate([np.linspace(-9.0, 9.0, 721),
                                    np.random.default_rng(0).normal(0, 3, 2000)]), "float32")
    value, gradient = _value_and_gradient(gelu_tanh, x)
    want_value, want_gradient = _value_and_gradient(
        lambda t: keras.activations.gelu(t, approximate=True), x)
    np.testing.assert_allclose(value, want_value, atol=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, atol=1e-5)
    assert np.abs(want_gradient).max() > 0.5  # the comparison covers real slopes


def _forward_tensors_the_gradient_reads(activation):
    """The `[4, 8]` float tensors of the forward pass that the backward pass reads."""
    forward_ops = []

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = activation(x)
        forward_ops.extend(tf.compat.v1.get_default_graph().get_operations())
        return tape.gradient(y, x)

    graph = step.get_concrete_function(tf.TensorSpec([4, 8], tf.float32)).graph
    forward = set(forward_ops)
    read = set()
    for op in graph.get_operations():
        if op in forward:
            continue
        for tensor in op.inputs:
            if tensor.op in forward and tensor.dtype == tf.float32 and tensor.shape == (4, 8):
                read.add(tensor.op.type)
    return read


def test_gelu_tanh_keeps_only_its_input_for_the_gradient():
    plain = _forward_tensors_the_gradient_reads(
        lambda t: keras.activations.gelu(t, approximate=True))
    assert {"Tanh", "Placeholder"} <= plain and len(plain) >= 3  # intermediates kept
    assert _forward_tensors_the_gradient_reads(gelu_tanh) == {"Placeholder"}  # x alone


KERAS_HUB_TANH_GELU = keras.saving.get_registered_object("keras_hub>gelu_approximate")


def _t5_backbone(activation):
    keras.utils.set_random_seed(0)
    return keras_hub.models.T5Backbone(
        vocabulary_size=40, num_layers=2, num_heads=2, hidden_dim=16, intermediate_dim=32,
        key_value_dim=8, dropout=0.0, activation=activation, use_gated_activation=True,
        tie_embedding_weights=False)


def _backbone_inputs():
    rng = np.random.default_rng(1)
    return {"encoder_token_ids": rng.integers(3, 40, (2, 7)),
            "encoder_padding_mask": np.ones((2, 7), "int32"),
            "decoder_token_ids": rng.integers(3, 40, (2, 5)),
            "decoder_padding_mask": np.ones((2, 5), "int32")}


def _output_and_gradients(backbone, inputs):
    with tf.GradientTape() as tape:
        out = backbone(inputs)["decoder_sequence_output"]
        loss = tf.reduce_sum(out * tf.sin(out))
    gradients = tape.gradient(loss, backbone.trainable_variables)
    return out.numpy(), [tf.convert_to_tensor(g).numpy() for g in gradients if g is not None]


def test_use_gelu_tanh_swaps_keras_hub_tanh_gelu_without_changing_outputs_or_gradients():
    built = _t5_backbone(KERAS_HUB_TANH_GELU)
    # As a preset loads it: from its saved config.
    backbone = keras_hub.models.T5Backbone.from_config(built.get_config())
    backbone.set_weights(built.get_weights())
    inputs = _backbone_inputs()
    want_output, want_gradients = _output_and_gradients(backbone, inputs)
    config = backbone.get_config()

    assert use_gelu_tanh(backbone) == 4  # 2 encoder + 2 decoder layers
    layers = [*backbone.encoder_transformer_layers, *backbone.decoder_transformer_layers]
    assert all(layer.input_projector.activation is gelu_tanh for layer in layers)
    output, gradients = _output_and_gradients(backbone, inputs)
    np.testing.assert_allclose(output, want_output, rtol=1e-5, atol=1e-5)
    assert len(gradients) == len(want_gradients) > 10
    for got, want in zip(gradients, want_gradients):  # float rounding, relative to |gradient|
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert backbone.get_config() == config  # what it saves is what it was built with
    assert use_gelu_tanh(backbone) == 0  # already swapped


@pytest.mark.parametrize("activation", ["relu", "gelu"])  # "gelu" is the exact one
def test_use_gelu_tanh_leaves_other_activations_alone(activation):
    backbone = _t5_backbone(activation)
    assert use_gelu_tanh(backbone) == 0
    projector = backbone.encoder_transformer_layers[0].input_projector
    assert projector.activation is keras.activations.get(activation)


def test_distill_step_by_step_puts_gelu_tanh_into_a_keras_hub_t5():
    tokenizer = testing.tiny_seq2seq_lm().preprocessor.tokenizer
    backbone = _t5_backbone(KERAS_HUB_TANH_GELU)
    preprocessor = keras_hub.models.T5Seq2SeqLMPreprocessor(tokenizer=tokenizer)
    lm = keras_hub.models.T5Seq2SeqLM(backbone=backbone, preprocessor=preprocessor)
    DistillStepByStep(lm, max_input_length=16, max_label_length=4, max_rationale_length=8)
    assert backbone.decoder_transformer_layers[-1].input_projector.activation is gelu_tanh
