"""T5's decoder: key/value caches for generation, shared encoder output for scoring."""

from __future__ import annotations

import tensorflow as tf

from dss_keras.decoding.decoder import Decoder


class T5Decoder(Decoder):
    """T5 (v1.0 and v1.1) with key/value caches and a precomputed position bias.

    The relative position bias of the decoder is computed once, by the first
    decoder layer, for every (query, key) position pair up to the longest
    output; step `t` reads row `t`, columns `0..t`.

    With `transpose_bfloat16_kernels`, for a model whose weights no longer
    change, bfloat16 kernels of the decoder are kept transposed, `[out, in]`
    (`variables`, in place of `replaced_variables`): with one token per row,
    TensorFlow's oneDNN bfloat16 product runs 1.5-2x faster as `kernel . x`
    than as `x . kernel`. Kernels that read the same input are stacked into
    one (self-attention's query, key and value; cross-attention's key and
    value; the gated feed-forward's input and gate), so that each group is
    one product: a step of t5-v1.1-small's decoder is 700 ops instead of 796,
    and each op has a fixed cost. Float32 and int8 kernels are used as the
    model holds them.
    """

    def __init__(self, seq2seq_lm, transpose_bfloat16_kernels: bool = False):
        super().__init__(seq2seq_lm)
        self.backbone = seq2seq_lm.backbone
        self.layers = self.backbone.decoder_transformer_layers
        attention = self.layers[0].self_attention
        self.num_heads = attention.num_heads
        self.head_dim = attention.key_value_dim
        # The residual stream, norms and attention compute in the layer norms' dtype; a
        # projection may compute in a lower one (`dss_keras.export_precision`).
        self.dtype = tf.as_dtype(self.backbone.decoder_layer_norm.compute_dtype)
        self._kernels = {}  # id(Dense) -> its kernel, transposed
        self._stacked = {}  # ids of Dense layers that read one input -> their kernels, stacked
        self._output_kernel = None
        if not transpose_bfloat16_kernels:
            return
        for group in self._read_together():
            if all(_plain_bfloat16(dense) and not dense.use_bias for dense in group):
                self._stacked[tuple(map(id, group))] = self._transposed(
                    *(dense.kernel for dense in group))
        stacked = {id_ for ids in self._stacked for id_ in ids}
        for dense in self._projections():
            if id(dense) not in stacked and _plain_bfloat16(dense):
                self._kernels[id(dense)] = self._transposed(dense.kernel)
        embedding = self.backbone.token_embedding
        output = embedding.embeddings if self.backbone.tie_embedding_weights else \
            embedding.reverse_embeddings
        if embedding.quantization_mode is None and _is_bfloat16(output):
            # Tied: the embedding table is the transposed output kernel already.
            self._output_kernel = (embedding.embeddings if self.backbone.tie_embedding_weights
                                   else self._transposed(output))

    def start(self, token_ids, padding_mask, num_positions):
        memory = self._run(lambda t: self.seq2seq_lm.call_encoder(t, padding_mask), token_ids)
        rows = tf.reshape(memory, [-1, memory.shape[-1]])
        batch = tf.shape(memory)[0]

        def heads(projected):
            return self._heads(tf.reshape(projected, [batch, -1, projected.shape[-1]]))

        cross = [
            tuple(map(heads, self._project_together(
                (layer.cross_attention.key_projector, layer.cross_attention.value_projector),
                rows)))
            for layer in self.layers
        ]
        # As KerasHub: masked keys get -1e9 added to their scores.
        mask = tf.cast(padding_mask, memory.dtype)[:, None, None, :]
        cross_bias = (1.0 - mask) * -1e9
        self_bias = self.layers[0].self_attention.compute_bias(num_positions, num_positions)
        return cross, cross_bias, tf.cast(self_bias, memory.dtype)

    def empty_cache(self, batch, state):
        dtype = state[1].dtype
        empty = tf.zeros([batch, self.num_heads, 0, self.head_dim], dtype)
        return [(empty, empty) for _ in self.layers]

    def cache_shapes(self):
        shape = tf.TensorShape([None, self.num_heads, None, self.head_dim])
        return [(shape, shape) for _ in self.layers]

    def step(self, state, cache, token_ids, position):
        # One token per row: activations are `[batch, hidden]`, so every
        # projection is a plain 2-D matmul.
        cross, cross_bias, self_bias = state
        self_bias = self_bias[:, :, position : position + 1, : position + 1]
        run = self._run

        def project(dense, h):
            return self._project(dense, h, one_row=True)

        x = run(self.backbone.token_embedding, token_ids)
        new_cache = []
        for layer, (keys, values), (cross_keys, cross_values) in zip(self.layers, cache, cross):
            attention = layer.self_attention
            h = run(layer.self_attention_layer_norm, x)
            query, key, value = map(self._one_position, self._project_together(
                _query_key_value(attention), h, one_row=True))
            keys = tf.concat([keys, key], axis=2)
            values = tf.concat([values, value], axis=2)
            new_cache.append((keys, values))
            x = x + project(attention.output_projector, _attend(query, keys, values, self_bias))

            attention = layer.cross_attention
            h = run(layer.cross_attention_layer_norm, x)
            query = self._one_position(project(attention.query_projector, h))
            x = x + project(attention.output_projector,
                            _attend(query, cross_keys, cross_values, cross_bias))
            x = x + self._feed_forward(layer, x, one_row=True)
        return self._logits(x, one_row=True), new_cache

    def candidate_logits(self, token_ids, padding_mask, decoder_ids, positions):
        # Every row's candidates share its encoder output: a candidate's
        # self-attention sees its own tokens (causally), while the
        # cross-attention of all candidates of a row is one product with the
        # row's keys. Activations are `[rows * candidates * length, hidden]`.
        shape = tf.shape(decoder_ids)
        batch, candidates, length = shape[0], shape[1], shape[2]
        cross, cross_bias, self_bias = self.start(token_ids, padding_mask, length)
        causal = tf.linalg.band_part(tf.ones([length, length], self_bias.dtype), -1, 0)
        self_bias = (self_bias + (1.0 - causal) * -1e9)[:, None]  # [1, 1, heads, q, k]
        per_candidate = [batch, candidates, length, self.num_heads, self.head_dim]
        per_row = [batch, candidates * length, self.num_heads, self.head_dim]

        def heads(x, shape, order):
            return tf.transpose(tf.reshape(x, shape), order)

        def merged(x, order):
            return tf.reshape(tf.transpose(x, order), [-1, self.num_heads * self.head_dim])

        run, project = self._run, self._project
        x = run(self.backbone.token_embedding, tf.reshape(decoder_ids, [-1]))
        for layer, (cross_keys, cross_values) in zip(self.layers, cross):
            attention = layer.self_attention
            h = run(layer.self_attention_layer_norm, x)
            query, keys, values = (
                heads(projected, per_candidate, [0, 1, 3, 2, 4])
                for projected in self._project_together(_query_key_value(attention), h)
            )
            attended = _weighted_values(query, keys, values, self_bias)
            x = x + project(attention.output_projector, merged(attended, [0, 1, 3, 2, 4]))

            attention = layer.cross_attention
            h = run(layer.cross_attention_layer_norm, x)
            query = heads(project(attention.query_projector, h), per_row, [0, 2, 1, 3])
            attended = _weighted_values(query, cross_keys, cross_values, cross_bias)
            x = x + project(attention.output_projector, merged(attended, [0, 2, 1, 3]))
            x = x + self._feed_forward(layer, x)
        x = tf.reshape(x, [batch, candidates, length, -1])
        return self._logits(tf.gather_nd(x, positions))

    def _logits(self, x, one_row: bool = False):
        """The decoder's last hidden states `[rows, hidden]` -> logits `[rows, vocab]`."""
        x = self._run(self.backbone.decoder_layer_norm, x)
        if self.backbone.tie_embedding_weights:
            x = x * tf.cast(self.backbone.hidden_dim**-0.5, x.dtype)
        if self._output_kernel is None:
            return self.backbone.token_embedding(x, reverse=True)
        return _transposed_product(self._output_kernel, x, one_row)

    def _feed_forward(self, layer, x, one_row: bool = False):
        """A T5 layer's feed-forward block on `x` (the residual is the caller's)."""
        h = self._run(layer.layer_norm, x)
        if layer.use_gated_activation:
            hidden, gate = self._project_together(
                (layer.input_projector, layer.gate_projector), h, one_row, cast=False)
            hidden = hidden * gate
        else:
            hidden = self._project(layer.input_projector, h, one_row, cast=False)
        return self._project(layer.output_projector, hidden, one_row)

    def _project_together(self, denses, x, one_row: bool = False, cast: bool = True):
        """`[self._project(dense, x) for dense in denses]`, as one product where their
        kernels are stacked."""
        kernel = self._stacked.get(tuple(map(id, denses)))
        if kernel is None:
            return [self._project(dense, x, one_row, cast) for dense in denses]
        product = _transposed_product(kernel, x, one_row)
        if cast:  # one cast for the group
            product = tf.cast(product, self.dtype)
        parts = tf.split(product, [dense.units for dense in denses], axis=-1)
        return [dense.activation(part) for dense, part in zip(denses, parts)]

    def _project(self, dense, x, one_row: bool = False, cast: bool = True):
        """A `Dense` layer on `x` `[rows, in]`, through its transposed kernel if it has one."""
        kernel = self._kernels.get(id(dense))
        if kernel is None:
            y = dense(x)
        else:
            y = _transposed_product(kernel, x, one_row)
            if dense.bias is not None:
                y = y + tf.cast(dense.bias, y.dtype)
            if dense.activation is not None:
                y = dense.activation(y)
        return tf.cast(y, self.dtype) if cast else y

    def _run(self, layer, x):
        """`layer(x)` in the residual stream's dtype."""
        return tf.cast(layer(x), self.dtype)

    def _projections(self):
        for layer in self.layers:
            yield from (layer.self_attention.query_projector, layer.self_attention.key_projector,
                        layer.self_attention.value_projector,
                        layer.self_attention.output_projector,
                        layer.cross_attention.query_projector, layer.cross_attention.key_projector,
                        layer.cross_attention.value_projector,
                        layer.cross_attention.output_projector,
                        layer.input_projector, layer.output_projector)
            if layer.use_gated_activation:
                yield layer.gate_projector

    def _read_together(self):
        """Groups of projections that read the same input, in the order `_projections` has them."""
        for layer in self.layers:
            yield _query_key_value(layer.self_attention)
            yield layer.cross_attention.key_projector, layer.cross_attention.value_projector
            if layer.use_gated_activation:
                yield layer.input_projector, layer.gate_projector

    def _transposed(self, *kernels):
        """A variable holding the transposes of `kernels`, stacked (`[sum of outs, in]`);
        `kernels` are no longer read."""
        first = kernels[0]
        with tf.init_scope():  # created eagerly even when first asked for inside a trace
            name = getattr(first, "path", first.name).replace("/", "_") + (
                "_transposed" if len(kernels) == 1 else f"_and_{len(kernels) - 1}_more_transposed")
            transposed = tf.Variable(tf.concat([tf.transpose(k) for k in kernels], axis=0),
                                     trainable=False, name=name)
        self.variables.append(transposed)
        self.replaced_variables.extend(getattr(k, "value", k) for k in kernels)
        return transposed

    def _heads(self, x):
        """`[batch, length, heads * dim]` -> `[batch, heads, length, dim]`."""
        x = tf.reshape(x, [tf.shape(x)[0], -1, self.num_heads, self.head_dim])
        return tf.transpose(x, [0, 2, 1, 3])

    def _one_position(self, x):
        """`[batch, heads * dim]` -> `[batch, heads, 1, dim]`."""
        return tf.reshape(x, [-1, self.num_heads, 1, self.head_dim])


def _transposed_product(kernel, x, one_row: bool):
    """`x . kernelᵀ` for `kernel` `[out, in]`; with one row per example, as `(kernel . xᵀ)ᵀ`."""
    x = tf.cast(x, kernel.dtype)
    if one_row:
        return tf.transpose(tf.matmul(kernel, x, transpose_b=True))
    return tf.matmul(x, kernel, transpose_b=True)


def _is_bfloat16(variable) -> bool:
    return variable is not None and tf.as_dtype(variable.dtype) == tf.bfloat16


def _plain_bfloat16(dense) -> bool:
    """A Dense layer with a bfloat16 kernel of its own (not quantized)."""
    return dense.quantization_mode is None and _is_bfloat16(getattr(dense, "kernel", None))


def _query_key_value(attention):
    return attention.query_projector, attention.key_projector, attention.value_projector


def _weighted_values(query, keys, values, bias):
    """`softmax(query . keys + bias) . values` over the last two axes (T5: no scaling)."""
    scores = tf.matmul(query, keys, transpose_b=True) + bias
    return tf.matmul(tf.nn.softmax(scores, axis=-1), values)


def _attend(query, keys, values, bias):
    """One query per row over cached keys: `[batch, heads, 1, dim]` -> `[batch, heads * dim]`."""
    output = _weighted_values(query, keys, values, bias)
    return tf.reshape(output, [-1, query.shape[1] * query.shape[3]])


def has_plain_output_projection(backbone) -> bool:
    """Whether the output projection is a plain matmul (no soft cap, no cast)."""
    embedding = backbone.token_embedding
    return (
        getattr(embedding, "logit_soft_cap", None) is None
        and getattr(embedding, "reverse_dtype", None) is None
    )
