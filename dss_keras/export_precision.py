"""The precision of the exported serving graph: float32, bfloat16 or int8 weights.

`with_precision(seq2seq_lm, precision)` returns the model the export traces:

- `"float32"`: float32 weights and compute (a model trained with a mixed
  policy is copied to float32; a float32 model is used as it is);
- `"bfloat16"`: a copy whose weights are all stored in bfloat16 and whose
  matrix products (every `Dense`, the embedding and the output projection)
  compute in bfloat16, on the CPU's bfloat16 units (AVX-512 BF16, AMX) or a
  GPU's. Each generated token reads half the bytes of float32. The rest (the
  residual stream, layer norms, attention's softmax) computes in float32:
  done in bfloat16 too, it changed 2.4% of the quickstart model's labels
  against float32, and 0.8% this way;
- `"int8"`: a float32 copy quantized by Keras' own `quantize("int8")`: every
  `Dense` and embedding stores int8 weights with one float scale per output
  channel, and the `Dense` layers quantize their inputs to int8 on the fly
  too (Keras' scheme), so their products are int8 x int8 -> int32. The
  SavedModel holds a quarter of float32's bytes.

What each buys depends on the kernels TensorFlow has for it. On x86 CPUs
TensorFlow's bfloat16 matrix products go through oneDNN; its int8 products do
not (Eigen's generic kernel), so int8 saves memory and disk but is slower
than float32 there. A weight-only int8 scheme would not help either: without
a fused kernel TensorFlow writes out a float copy of every weight it
dequantizes, which is more bytes per token than float32.
`benchmarks/serving_latency.py` measures all three against the machine's
floor.

Keras' int8 `Dense` computes through a custom gradient, which TensorFlow warns
about when the SavedModel is loaded; `forward_only_int8(backbone)` gives those
layers the same forward computation without it while the export traces.
"""

from __future__ import annotations

import contextlib
import warnings

import keras
import tensorflow as tf
from keras import ops

from dss_keras.config import EXPORT_PRECISIONS as PRECISIONS

# The Keras dtype policy of each precision's copy (int8 quantizes a float32 copy).
_POLICIES = {"float32": "float32", "bfloat16": "bfloat16", "int8": "float32"}


def check_precision(precision: str) -> str:
    """Returns `precision` if it is one of `PRECISIONS`, else raises `ValueError`."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"`precision` must be one of {PRECISIONS}. Received: precision={precision!r}"
        )
    return precision


def with_precision(seq2seq_lm, precision: str = "float32"):
    """The `Seq2SeqLM` to export at `precision`: `seq2seq_lm` itself or a converted copy.

    The copy is built from the backbone's config with the precision's dtype
    policy and gets the original's weights (cast; quantized for int8); it
    shares the original's preprocessor. The original is left as it was.

    Args:
        seq2seq_lm: A KerasHub `Seq2SeqLM` (T5, BART, ...).
        precision: One of `PRECISIONS`.

    Returns:
        A `Seq2SeqLM` of the same class, computing at `precision`.

    Examples:

    >>> from dss_keras import testing
    >>> lm = testing.tiny_seq2seq_lm()
    >>> with_precision(lm, "float32") is lm
    True
    >>> half = with_precision(lm, "bfloat16")
    >>> half.backbone.token_embedding.embeddings.dtype, precision_of(half)
    ('bfloat16', 'bfloat16')
    >>> half.backbone.decoder_layer_norm.compute_dtype  # between products
    'float32'
    >>> int8 = with_precision(lm, "int8")
    >>> int8.backbone.decoder_transformer_layers[0].input_projector.quantization_mode
    'int8'
    >>> weight_bytes(half) * 2 == weight_bytes(lm)
    True
    """
    check_precision(precision)
    policy = _POLICIES[precision]
    backbone = seq2seq_lm.backbone
    if precision == "float32" and _has_policy(backbone, "float32"):
        return seq2seq_lm
    copy = type(seq2seq_lm)(
        backbone=_backbone_copy(backbone, policy), preprocessor=seq2seq_lm.preprocessor
    )
    if precision == "bfloat16":
        _float32_between_products(copy.backbone)
    if precision == "int8":
        with warnings.catch_warnings():
            # Keras names every layer without weights to quantize (norms, dropout).
            warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
            copy.backbone.quantize("int8")
    return copy


def weight_bytes(seq2seq_lm) -> int:
    """Bytes of the model's weights as stored (what the SavedModel's variables hold)."""
    return int(sum(v.numpy().nbytes for v in seq2seq_lm.backbone.weights))


def precision_of(seq2seq_lm) -> str:
    """The precision a `Seq2SeqLM` computes at: one of `PRECISIONS`, or its policy's name."""
    backbone = seq2seq_lm.backbone
    if any(getattr(layer, "quantization_mode", None) == "int8"
           for layer in backbone._flatten_layers(include_self=False, recursive=True)):
        return "int8"
    if backbone.weights and all(v.dtype == "bfloat16" for v in backbone.weights):
        return "bfloat16"
    return backbone.dtype_policy.name


@contextlib.contextmanager
def forward_only_int8(backbone):
    """Within it, Keras' int8 `Dense` layers compute their forward pass without a custom gradient.

    The values are those of Keras' own int8 call (inputs quantized per row
    when the layer quantizes its inputs, int8 x int8 -> int32 products, the
    result divided by both scales). A graph traced inside holds no custom
    gradient, so TensorFlow loads it silently. Layers get their own call back
    on exit.

    Examples:

    >>> from dss_keras import testing
    >>> lm = with_precision(testing.tiny_seq2seq_lm(), "int8")
    >>> dense = lm.backbone.decoder_transformer_layers[0].input_projector
    >>> x = keras.random.normal([2, dense.kernel.shape[0]], seed=1)
    >>> expected = dense(x)
    >>> with forward_only_int8(lm.backbone):
    ...     bool(ops.all(dense(x) == expected))
    True
    """
    layers = [
        layer
        for layer in backbone._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.Dense) and layer.quantization_mode == "int8"
    ]
    for layer in layers:
        layer._int8_call = _forward_int8_call(layer)
    try:
        yield backbone
    finally:
        for layer in layers:
            del layer._int8_call


# --- helpers -------------------------------------------------------------------


def _has_policy(backbone, policy: str) -> bool:
    return backbone.dtype_policy.name == policy and all(
        v.dtype == policy for v in backbone.weights
    )


def _float32_between_products(backbone) -> None:
    """Every layer but the matrix products (`Dense`, embeddings) computes in float32.

    Their weights stay in bfloat16 (Keras casts a layer norm's scale when it
    reads it); a product's bfloat16 output is cast back where the model adds
    it to the residual stream (Keras' dtype promotion; `dss_keras.decoding`).
    """
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)):
            layer.dtype_policy = "float32"


def _backbone_copy(backbone, policy: str):
    """A new backbone from `backbone`'s config at `policy`, holding its weights cast."""
    from dss_keras.tf_fast_path.lean_t5 import keras_hub_t5_layers

    # The config of KerasHub's own layers (a lean T5 records its training-only activation).
    with keras_hub_t5_layers(backbone):
        config = backbone.get_config()
    config["dtype"] = policy
    with warnings.catch_warnings():
        # Building KerasHub's functional T5 warns that its attention drops Keras masks.
        warnings.filterwarnings("ignore", message=".*does not support masking")
        copy = type(backbone).from_config(config)
    if [tuple(v.shape) for v in copy.weights] != [tuple(v.shape) for v in backbone.weights]:
        raise ValueError(
            "The backbone rebuilt from its config has other weights than the original; "
            f"it cannot be converted. Received: backbone={type(backbone).__name__}"
        )
    for target, source in zip(copy.weights, backbone.weights):
        target.assign(tf.cast(source.value, target.dtype))
    return copy


def _forward_int8_call(layer):
    """Keras' `Dense._int8_call` without its custom gradient (the forward pass is the same)."""

    def call(inputs, training=None):
        scale, quantized = layer.kernel_scale, inputs
        if layer.inputs_quantizer:
            quantized, inputs_scale = layer.inputs_quantizer(inputs, axis=-1)
            scale = ops.multiply(scale, inputs_scale)
        x = ops.cast(ops.matmul(quantized, layer._kernel), layer.compute_dtype)
        x = ops.divide(x, scale)
        if layer.lora_enabled:
            lora = ops.matmul(ops.matmul(inputs, layer.lora_kernel_a), layer.lora_kernel_b)
            x = ops.cast(ops.add(x, (layer.lora_alpha / layer.lora_rank) * lora),
                         layer.compute_dtype)
        if layer.bias is not None:
            x = ops.add(x, layer.bias)
        if layer.activation is not None:
            x = layer.activation(x)
        return x

    return call
