"""T5 v1.1's feed-forward activation, with a gradient that keeps only its input.

T5 v1.1 gates its feed-forward block with GELU's tanh approximation
(`0.5 x (1 + tanh(c (x + 0.044715 x^3)))`, c = sqrt(2 / pi)). Written as
TensorFlow ops and differentiated op by op, it keeps three intermediates the
size of its `[tokens, intermediate_dim]` input for the backward pass (the
tanh, `1 + tanh` and `0.5 x`), in each of the model's layers. `gelu_tanh`
computes the same values but keeps only `x`, and its gradient computes the
tanh again: at the t5-v1_1-small shape of `benchmarks/train_throughput.py`
about 100 MB less kept for the backward pass and 180-210 MB less peak RSS, at
the same speed (BENCHMARKS.md).

`use_gelu_tanh(backbone)` swaps it into the feed-forward layers of a T5
backbone built with another tanh-GELU (KerasHub's presets use
`keras_hub>gelu_approximate`); `DistillStepByStep` does so when it wraps a T5.
The backbone's own config is untouched, so saving it saves what it was built
with. `gelu_tanh` is registered on every backend (a tiny T5 is built with it),
and this module imports TensorFlow only when it runs on TensorFlow (and
KerasHub only when it swaps activations).

Examples:

>>> import keras_hub, numpy as np, tensorflow as tf
>>> x = tf.constant(np.linspace(-4.0, 4.0, 9), "float32")
>>> bool(np.allclose(gelu_tanh(x), keras.activations.gelu(x, approximate=True), atol=1e-6))
True
>>> keras_hub_gelu = keras.saving.get_registered_object("keras_hub>gelu_approximate")
>>> backbone = keras_hub.models.T5Backbone(
...     vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
...     key_value_dim=8, activation=keras_hub_gelu)
>>> use_gelu_tanh(backbone)  # the encoder's and the decoder's feed-forward layer
2
>>> backbone.encoder_transformer_layers[0].input_projector.activation is gelu_tanh
True
"""

from __future__ import annotations

import functools
import math

import keras

_C = math.sqrt(2.0 / math.pi)
_A = 0.044715


@functools.cache
def _gelu_tanh_keeping_input():
    """The TensorFlow function with the lean gradient (made on first use: TensorFlow only)."""
    import tensorflow as tf

    @tf.custom_gradient
    def gelu(x):
        tanh = tf.tanh(_C * x * (1.0 + _A * tf.square(x)))

        def gradient(upstream):
            # Computed again once `upstream` arrives; without the dependency TensorFlow
            # could run it in the forward pass and hold the result until the backward pass.
            with tf.control_dependencies([upstream]):
                x_now = tf.identity(x)
            square = tf.square(x_now)
            tanh = tf.tanh(_C * x_now * (1.0 + _A * square))
            inner_slope = _C * (1.0 + 3.0 * _A * square)
            return upstream * (0.5 * (1.0 + tanh)
                               + 0.5 * x_now * (1.0 - tf.square(tanh)) * inner_slope)

        return 0.5 * x * (1.0 + tanh), gradient

    return gelu


@keras.saving.register_keras_serializable(package="dss_keras")
def gelu_tanh(x):
    """GELU's tanh approximation (t5-v1_1's "gated-gelu"), keeping only `x` for its gradient.

    Equal to `keras.activations.gelu(x, approximate=True)` in value and
    gradient; on backends other than TensorFlow it is that function.

    Args:
        x: A float tensor.

    Returns:
        `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`, shaped like `x`.
    """
    if keras.backend.backend() != "tensorflow":
        return keras.activations.gelu(x, approximate=True)
    return _gelu_tanh_keeping_input()(x)


def swap_feedforward_activation(backbone: keras.Model, old, new) -> int:
    """Makes the T5 feed-forward layers whose activation is `old` use `new`.

    Args:
        backbone: Any KerasHub backbone; only a `T5Backbone` has layers to swap.
        old: The activation function to replace (compared by identity).
        new: The activation function to put in its place.

    Returns:
        The number of feed-forward projections whose activation was swapped.
    """
    import keras_hub

    if not isinstance(backbone, keras_hub.models.T5Backbone):
        return 0
    swapped = 0
    for layer in [*backbone.encoder_transformer_layers, *backbone.decoder_transformer_layers]:
        if layer.input_projector.activation is old:
            layer.input_projector.activation = new
            swapped += 1
    return swapped


def use_gelu_tanh(backbone: keras.Model) -> int:
    """Makes a T5 backbone's feed-forward layers use `gelu_tanh`; returns how many changed.

    Only layers whose activation is KerasHub's tanh-GELU
    (`keras_hub>gelu_approximate`) change (their output is the same); other
    backbones and activations are left alone.

    Args:
        backbone: Any KerasHub backbone.

    Returns:
        The number of feed-forward projections whose activation was swapped.
    """
    return swap_feedforward_activation(backbone, keras_hub_gelu_tanh(), gelu_tanh)


def keras_hub_gelu_tanh():
    """KerasHub's tanh-GELU (`keras_hub>gelu_approximate`), which its T5 presets use."""
    import keras_hub  # noqa: F401  (registers it)

    return keras.saving.get_registered_object("keras_hub>gelu_approximate")
