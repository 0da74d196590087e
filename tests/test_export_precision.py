"""Precision of the export: converted copies hold the weights, leave the model as it was."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from dss_keras import decoding, testing
from dss_keras.export_precision import (forward_only_int8, precision_of, weight_bytes,
                                        with_precision)
from dss_keras.tf_fast_path.lean_t5 import T5LayerNormKeepingInput


@pytest.fixture(scope="module")
def lm():
    return testing.tiny_seq2seq_lm(num_layers=2)


def test_a_float32_model_is_exported_as_it_is(lm):
    assert with_precision(lm, "float32") is lm
    assert precision_of(lm) == "float32"


def test_a_bfloat16_copy_holds_the_weights_rounded(lm):
    half = with_precision(lm, "bfloat16")
    assert precision_of(half) == "bfloat16" and half.preprocessor is lm.preprocessor
    for copied, original in zip(half.backbone.weights, lm.backbone.weights):
        assert copied.dtype == "bfloat16" and original.dtype == "float32"
        np.testing.assert_array_equal(copied.numpy(),
                                      tf.cast(original.value, tf.bfloat16).numpy())
    assert weight_bytes(half) * 2 == weight_bytes(lm)


def test_a_copy_leaves_a_lean_model_lean():
    model = testing.tiny_model()
    with_precision(model.seq2seq_lm, "bfloat16")
    assert isinstance(model.seq2seq_lm.backbone.encoder_layer_norm, T5LayerNormKeepingInput)


def test_a_mixed_policy_model_is_copied_to_float32():
    from dss_keras import backbones

    mixed = backbones.tiny_t5(proto=testing.toy_vocabulary(), hidden_dim=16,
                              intermediate_dim=32, num_heads=2, num_layers=1,
                              dtype="mixed_bfloat16")
    copy = with_precision(mixed, "float32")
    assert copy is not mixed and precision_of(copy) == "float32"


def test_int8_quantizes_every_projection_and_quarters_their_bytes(lm):
    int8 = with_precision(lm, "int8")
    assert precision_of(int8) == "int8" and precision_of(lm) == "float32"
    quantizable = [layer for layer in int8.backbone._flatten_layers()
                   if isinstance(layer, (keras.layers.Dense, keras.layers.Embedding))]
    assert len(quantizable) > 20
    assert all(layer.quantization_mode == "int8" for layer in quantizable)
    assert weight_bytes(int8) < 0.35 * weight_bytes(lm)


def test_forward_only_int8_gives_keras_its_call_back(lm):
    int8 = with_precision(lm, "int8")
    dense = int8.backbone.decoder_transformer_layers[0].input_projector
    with forward_only_int8(int8.backbone):
        assert "_int8_call" in vars(dense)
    assert "_int8_call" not in vars(dense)


@pytest.mark.parametrize("precision, tolerance", [("bfloat16", 0.1), ("int8", 0.1)])
def test_reduced_precision_logits_stay_close(lm, precision, tolerance):
    pre = testing.tiny_model().preprocessor
    inputs = pre.encode_inputs([r.input for r in testing.toy_records(8, seed=2)], "label")
    targets = tf.constant([[[5, 6, 1]]] * 8)
    scores = {
        name: decoding.decoder_for(model).sequence_log_probabilities(
            inputs["encoder_token_ids"], inputs["encoder_padding_mask"], targets,
            tf.ones_like(targets), decoder_start_ids=[0]).numpy()
        for name, model in (("float32", lm), (precision, with_precision(lm, precision)))
    }
    np.testing.assert_allclose(scores[precision], scores["float32"], rtol=tolerance)


def test_rejects_an_unknown_precision(lm):
    with pytest.raises(ValueError, match="Received: precision='fp8'"):
        with_precision(lm, "fp8")
