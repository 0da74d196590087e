"""T5 layers that keep less of the forward pass for the backward pass.

Differentiated op by op, three parts of KerasHub's T5 keep tensors that are
cheap to compute again:

- The RMS layer norm (`weight * x / sqrt(mean(x^2) + epsilon)`) keeps the
  normalised values, a tensor the size of `x`, besides `x`. `rms_norm` keeps
  `x` and the per-token `1 / rms` and multiplies again in the backward pass.
- Attention keeps its probabilities twice, before and after dropout, each
  `[batch, heads, queries, keys]`: the largest activations of long rows.
  `attend` keeps the queries, keys and values (which the projections'
  gradients need anyway), the bias and the dropout's boolean mask, and
  computes the probabilities again from them in the backward pass.
- The feed-forward block keeps its norm's output, the activation's input and
  output, the gate and the dropped-out product. `feed_forward`
  (`dss_keras.tf_fast_path.lean_feed_forward`) keeps the block's input and its two
  projections, and computes the rest again.

`T5LayerNormKeepingInput`, `T5AttentionRecomputingProbabilities` and
`T5LayerRecomputingFeedForward` are KerasHub's layers with those
computations; `use_lean_t5_layers(backbone)`
gives a T5 backbone's layers their class (same weights, names, configs and
outputs) and its tanh-GELU `dss_keras.tf_fast_path.activations.gelu_tanh`, and
`DistillStepByStep` does so when it wraps a T5. It saves a model
with KerasHub's classes (`use_keras_hub_layer_classes`; Keras names the layers
in the file after their class, `dss_keras.tf_fast_path.saved_names`), so that
every backend loads the file, and the fast path gives the layers their lean
class again when it next traces a step.

Examples:

>>> import numpy as np, tensorflow as tf
>>> x = tf.constant([[3.0, 4.0]])
>>> np.round(rms_norm(x, tf.constant([1.0, 2.0]), epsilon=0.0).numpy().astype(float), 4).tolist()
[[0.8485, 2.2627]]
>>> backbone = keras_hub.models.T5Backbone(
...     vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
...     key_value_dim=8)
>>> use_lean_t5_layers(backbone)  # 7 layer norms, 3 attention layers, 2 T5 layers
12
"""

from __future__ import annotations

import contextlib

import keras
import keras_hub
import tensorflow as tf
from keras import ops
from keras_hub.src.models.t5.t5_layer_norm import T5LayerNorm
from keras_hub.src.models.t5.t5_multi_head_attention import T5MultiHeadAttention
from keras_hub.src.models.t5.t5_transformer_layer import T5TransformerLayer

from dss_keras.tf_fast_path.activations import (gelu_tanh, keras_hub_gelu_tanh,
                                                swap_feedforward_activation, use_gelu_tanh)
from dss_keras.tf_fast_path.lean_feed_forward import feed_forward


def rms_norm(x, weight, epsilon: float):
    """`weight * x / sqrt(mean(x^2, last axis) + epsilon)`, keeping `x` for its gradient.

    Args:
        x: A float tensor, normalised over its last axis.
        weight: The scale, shaped like `x`'s last axis, in `x`'s dtype.
        epsilon: Added to the mean square.

    Returns:
        A tensor shaped like `x`.
    """

    @tf.custom_gradient
    def norm(x, weight):
        inverse_rms = tf.math.rsqrt(tf.reduce_mean(tf.square(x), axis=-1, keepdims=True)
                                    + epsilon)

        def gradient(upstream):
            with tf.control_dependencies([upstream]):  # not before it is needed: see `attend`
                normalised = x * inverse_rms
            token_axes = tf.range(tf.rank(x) - 1)
            weight_gradient = tf.reduce_sum(upstream * normalised, axis=token_axes)
            scaled = upstream * weight
            along = tf.reduce_mean(scaled * normalised, axis=-1, keepdims=True)
            return inverse_rms * (scaled - normalised * along), weight_gradient

        return weight * (x * inverse_rms), gradient

    return norm(x, weight)


def attend(query, key, value, bias, keep=None, rate: float = 0.0):
    """T5 attention from projected heads, computing its probabilities again for the gradient.

    `softmax(query . key + bias)` over the keys, dropped out where `keep` is
    false (the kept ones scaled by `1 / (1 - rate)`, as Keras' `Dropout`
    does), applied to `value`. No scaling by the head size: T5 folds it into
    its query weights.

    Args:
        query: `[batch, queries, heads, head_dim]`.
        key, value: `[batch, keys, heads, head_dim]`.
        bias: Added to the scores; broadcastable to `[batch, heads, queries, keys]`.
        keep: Optional boolean dropout mask, `[batch, heads, queries, keys]`.
        rate: The dropout rate that drew `keep`.

    Returns:
        `[batch, queries, heads, head_dim]`.
    """

    def heads_first(tensor):  # [batch, length, heads, dim] <-> [batch, heads, length, dim]
        return tf.transpose(tensor, [0, 2, 1, 3])

    # Dropout in two halves: the mask on `[..., queries, keys]`, and `1 / (1 - rate)` on the
    # other operand of each product, `[..., length, head_dim]`, a smaller tensor.
    def zeroed(tensor):
        return tensor if keep is None else tf.where(keep, tensor, tf.zeros((), tensor.dtype))

    def scaled(tensor):
        return tensor if keep is None else tensor * tf.constant(1.0 / (1.0 - rate), tensor.dtype)

    @tf.custom_gradient
    def attention(query, key, value, bias):
        # Heads first once, so that each product below is a batched matmul without copies.
        query, key, value = heads_first(query), heads_first(key), heads_first(value)

        def probabilities():
            return tf.nn.softmax(tf.matmul(query, key, transpose_b=True) + bias)

        output = heads_first(tf.matmul(zeroed(probabilities()), scaled(value)))

        def gradient(upstream):
            # Nothing here would otherwise wait for `upstream`: TensorFlow could compute the
            # probabilities again as soon as the forward pass had, and hold them all along.
            with tf.control_dependencies([upstream]):
                weights = probabilities()
            upstream = scaled(heads_first(upstream))
            value_gradient = tf.matmul(zeroed(weights), upstream, transpose_a=True)
            weights_gradient = zeroed(tf.matmul(upstream, value, transpose_b=True))
            scores_gradient = weights * (
                weights_gradient - tf.reduce_sum(weights_gradient * weights, -1, keepdims=True))
            query_gradient = tf.matmul(scores_gradient, key)
            key_gradient = tf.matmul(scores_gradient, query, transpose_a=True)
            _, bias_axes = tf.raw_ops.BroadcastGradientArgs(
                s0=tf.shape(scores_gradient), s1=tf.shape(bias))
            bias_gradient = tf.reshape(tf.reduce_sum(scores_gradient, bias_axes), tf.shape(bias))
            return (heads_first(query_gradient), heads_first(key_gradient),
                    heads_first(value_gradient), bias_gradient)

        return output, gradient

    return attention(query, key, value, bias)


@keras.saving.register_keras_serializable(package="dss_keras")
class T5LayerNormKeepingInput(T5LayerNorm):
    """KerasHub's `T5LayerNorm` computed by `rms_norm`: the same outputs and gradients.

    Examples:

    >>> layer = T5LayerNormKeepingInput(epsilon=1e-6)
    >>> layer(tf.ones((2, 3, 8))).shape
    TensorShape([2, 3, 8])
    """

    def call(self, hidden_states):
        if keras.backend.backend() != "tensorflow":
            return super().call(hidden_states)
        weight = tf.cast(self.weight, hidden_states.dtype)
        return rms_norm(hidden_states, weight, self.epsilon)


@keras.saving.register_keras_serializable(package="dss_keras")
class T5AttentionRecomputingProbabilities(T5MultiHeadAttention):
    """KerasHub's `T5MultiHeadAttention`, training through `attend`: the same outputs.

    Only a training call without a cache changes; inference and cached
    decoding run KerasHub's own `call`. The dropout mask is drawn as the
    layer's `Dropout` draws it (from its seed generator, once per call, in
    the same shape and dtype), so the masks and the random stream stay those
    of KerasHub's layer.

    Examples:

    >>> layer = T5AttentionRecomputingProbabilities(
    ...     is_decoder=False, hidden_dim=16, key_value_dim=4, num_heads=2, dropout=0.1,
    ...     use_relative_attention_bias=True)
    >>> output, position_bias, cache = layer(tf.ones((2, 5, 16)), training=True)
    >>> output.shape, position_bias.shape
    (TensorShape([2, 5, 16]), TensorShape([1, 2, 5, 5]))
    """

    def call(self, hidden_states, mask=None, key_value_states=None, position_bias=None,
             cache=None, cache_update_index=None, training=False):
        if not training or cache is not None or keras.backend.backend() != "tensorflow":
            return super().call(hidden_states, mask=mask, key_value_states=key_value_states,
                                position_bias=position_bias, cache=cache,
                                cache_update_index=cache_update_index, training=training)
        batch_size = ops.shape(hidden_states)[0]

        def heads(states):  # [batch, length, inner_dim] -> [batch, length, heads, head_dim]
            return ops.reshape(states, (batch_size, -1, self.num_heads, self.key_value_dim))

        source = hidden_states if key_value_states is None else key_value_states
        query = heads(self.query_projector(hidden_states))
        key = heads(self.key_projector(source))
        value = heads(self.value_projector(source))
        if position_bias is None:
            position_bias = self._masked_position_bias(ops.shape(query)[1], ops.shape(key)[1],
                                                       mask)
        rate = self.dropout_layer.rate
        keep = None
        if rate > 0:  # the draw of KerasHub's layer: its Dropout's generator, shape and dtype
            shape = (batch_size, self.num_heads, ops.shape(query)[1], ops.shape(key)[1])
            uniform = keras.random.uniform(shape, dtype=query.dtype,
                                           seed=self.dropout_layer.seed_generator)
            keep = uniform >= rate
        output = attend(query, key, value, ops.cast(position_bias, query.dtype), keep, rate)
        output = ops.reshape(output, (batch_size, -1, self.inner_dim))
        return self.output_projector(output), position_bias, cache

    def _masked_position_bias(self, query_length, key_length, mask):
        """The relative position bias (zeros without one), with masked keys at -1e9.

        Without a relative bias (cross-attention) the masked part alone, one
        row for all heads (adding zeros first changes no value).
        """
        if not self.use_relative_attention_bias:
            if mask is None:
                return ops.zeros((1, self.num_heads, query_length, key_length),
                                 self.compute_dtype)
            return (1.0 - ops.cast(mask[:, None, :, :], self.compute_dtype)) * -1e9
        bias = self.compute_bias(query_length, key_length)
        if mask is None:
            return bias
        return bias + (1.0 - ops.cast(mask[:, None, :, :], bias.dtype)) * -1e9


@keras.saving.register_keras_serializable(package="dss_keras")
class T5LayerRecomputingFeedForward(T5TransformerLayer):
    """KerasHub's `T5TransformerLayer`, training its feed-forward block through `feed_forward`.

    A training call without caches runs the layer's own sublayers in
    KerasHub's order, its feed-forward block as one
    `dss_keras.tf_fast_path.lean_feed_forward.feed_forward` (same weights, same dropout
    draws: the inner mask from the layer's `Dropout` generator, then its outer
    dropout). Inference, cached decoding, and blocks with biases, LoRA or
    quantised kernels run KerasHub's own `call`.

    Examples:

    >>> layer = T5LayerRecomputingFeedForward(
    ...     is_decoder=False, hidden_dim=16, intermediate_dim=32, key_value_dim=4, dropout=0.1,
    ...     activation="relu", layer_norm_epsilon=1e-6, num_heads=2, use_gated_activation=True,
    ...     use_relative_attention_bias=True)
    >>> output, position_bias = layer(tf.ones((2, 5, 16)), training=True)  # builds it
    >>> output, position_bias = layer(tf.ones((2, 5, 16)), training=True)
    >>> output.shape, position_bias.shape
    (TensorShape([2, 5, 16]), TensorShape([1, 2, 5, 5]))
    """

    def call(self, hidden_states, attention_mask=None, position_bias=None,
             encoder_hidden_states=None, encoder_attention_mask=None, use_causal_mask=False,
             self_attention_cache=None, self_attention_cache_update_index=None,
             cross_attention_cache=None, cross_attention_cache_update_index=None,
             training=False):
        if (not training or self_attention_cache is not None
                or cross_attention_cache is not None or not self._plain_feed_forward()):
            return super().call(
                hidden_states, attention_mask=attention_mask, position_bias=position_bias,
                encoder_hidden_states=encoder_hidden_states,
                encoder_attention_mask=encoder_attention_mask, use_causal_mask=use_causal_mask,
                self_attention_cache=self_attention_cache,
                self_attention_cache_update_index=self_attention_cache_update_index,
                cross_attention_cache=cross_attention_cache,
                cross_attention_cache_update_index=cross_attention_cache_update_index,
                training=training)
        if use_causal_mask and position_bias is None:
            attention_mask = self._compute_self_attention_mask(hidden_states, attention_mask,
                                                               None, None)
        x, position_bias, _ = self.self_attention(
            self.self_attention_layer_norm(hidden_states), mask=attention_mask,
            position_bias=position_bias, training=True)
        x = self.self_attention_dropout(x, training=True) + hidden_states
        if self.is_decoder:
            attended, _, _ = self.cross_attention(
                self.cross_attention_layer_norm(x), key_value_states=encoder_hidden_states,
                mask=encoder_attention_mask, training=True)
            x = self.cross_attention_dropout(attended, training=True) + x
        return self.dropout_layer(self._feed_forward(x), training=True) + x, position_bias

    def _plain_feed_forward(self) -> bool:
        """Whether the block is what `feed_forward` computes (no bias, LoRA or quantisation)
        and has its weights (a layer not called yet builds them in KerasHub's call)."""
        dense = [self.input_projector, self.output_projector]
        if self.use_gated_activation:
            dense.append(self.gate_projector)
        linear = keras.activations.linear
        return (keras.backend.backend() == "tensorflow"
                and self.dropout_layer.noise_shape is None
                and all(layer.built for layer in [*dense, self.layer_norm])
                and all(not layer.use_bias and not layer.lora_enabled
                        and not layer.quantization_mode for layer in dense)
                and all(layer.activation is linear for layer in dense[1:]))

    def _feed_forward(self, x):
        norm = self.layer_norm
        rate = self.dropout_layer.rate
        keep = None
        if rate > 0:  # the draw of the block's `Dropout`: its generator, shape and dtype
            shape = (*ops.shape(x)[:-1], self.input_projector.units)
            keep = keras.random.uniform(shape, dtype=x.dtype,
                                        seed=self.dropout_layer.seed_generator) >= rate

        def kernel(layer):
            return None if layer is None else ops.cast(layer.kernel, x.dtype)

        return feed_forward(
            x, ops.cast(norm.weight, x.dtype), kernel(self.input_projector),
            kernel(self.gate_projector if self.use_gated_activation else None),
            kernel(self.output_projector),
            normalize=lambda x, weight: rms_norm(x, weight, norm.epsilon),
            activation=self.input_projector.activation, keep=keep, rate=rate)


def swap_layer_class(backbone: keras.Model, old: type, new: type) -> int:
    """Gives every layer of `backbone` whose class is exactly `old` the class `new`.

    The layers keep their weights, names and state; `new` should be a
    subclass of `old` that computes the same values.

    Args:
        backbone: Any Keras model.
        old: The class to replace (subclasses of it are left alone).
        new: The class to put in its place.

    Returns:
        The number of layers changed.
    """
    changed = 0
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if type(layer) is old:
            layer.__class__ = new
            changed += 1
    return changed


LEAN_CLASSES = {T5LayerNorm: T5LayerNormKeepingInput,
                T5MultiHeadAttention: T5AttentionRecomputingProbabilities,
                T5TransformerLayer: T5LayerRecomputingFeedForward}


def use_lean_t5_layers(backbone: keras.Model) -> int:
    """Gives a T5 backbone's layer norms and attention layers their lean class.

    Its feed-forward layers' KerasHub tanh-GELU, if any, becomes
    `gelu_tanh` (`dss_keras.tf_fast_path.activations.use_gelu_tanh`). Other backbones are
    left alone.

    Args:
        backbone: Any KerasHub backbone.

    Returns:
        The number of layers and feed-forward activations changed (0 when
        none is left to change).
    """
    if not isinstance(backbone, keras_hub.models.T5Backbone):
        return 0
    changed = use_gelu_tanh(backbone)
    return changed + sum(swap_layer_class(backbone, old, new)
                         for old, new in LEAN_CLASSES.items())


def use_keras_hub_layer_classes(backbone: keras.Model) -> int:
    """Gives the lean layers of a backbone KerasHub's classes again; returns how many changed.

    Their activations are left as they are (the same values either way). A
    file saved then names the layers as every backend does
    (`dss_keras.tf_fast_path.saved_names`).
    """
    return sum(swap_layer_class(backbone, lean, plain) for plain, lean in LEAN_CLASSES.items())


@contextlib.contextmanager
def keras_hub_t5_layers(backbone: keras.Model):
    """Within it, a backbone made lean by `use_lean_t5_layers` computes through KerasHub's layers.

    The lean layers' outputs are KerasHub's; only their gradients differ. A
    graph traced inside this context (the exported serving graph) therefore
    computes the same values and holds no custom gradient, which TensorFlow
    would warn about when the graph is loaded. The lean classes come back on
    exit.

    Examples:

    >>> backbone = keras_hub.models.T5Backbone(
    ...     vocabulary_size=40, num_layers=1, num_heads=2, hidden_dim=16, intermediate_dim=32,
    ...     key_value_dim=8)
    >>> use_lean_t5_layers(backbone)
    12
    >>> with keras_hub_t5_layers(backbone):
    ...     type(backbone.encoder_layer_norm).__name__
    'T5LayerNorm'
    >>> type(backbone.encoder_layer_norm).__name__
    'T5LayerNormKeepingInput'
    """
    keras_hub_class = {lean: plain for plain, lean in LEAN_CLASSES.items()}
    lean_layers = [layer for layer in backbone._flatten_layers(include_self=False, recursive=True)
                   if type(layer) in keras_hub_class]
    for layer in lean_layers:
        layer.__class__ = keras_hub_class[type(layer)]
    gelu = keras_hub_gelu_tanh()
    swapped = swap_feedforward_activation(backbone, gelu_tanh, gelu)
    try:
        yield backbone
    finally:
        for layer in lean_layers:
            layer.__class__ = LEAN_CLASSES[type(layer)]
        if swapped:
            swap_feedforward_activation(backbone, gelu, gelu_tanh)
