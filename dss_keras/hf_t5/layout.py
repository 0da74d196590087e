"""Where each weight of a `transformers` T5 checkpoint lives in a KerasHub `T5Backbone`.

One table serves both directions (reading a checkpoint and writing one). With `S` the stack
(`encoder` or `decoder`), `i` a block, and `^T` a transpose (PyTorch's `Linear` stores
`[out, in]`, Keras' `Dense` `[in, out]`):

- `shared.weight` -> `token_embedding.embeddings`; `lm_head.weight` (untied only) ->
  `token_embedding.reverse_embeddings`^T;
- `S.block.i.layer.0.SelfAttention.{q,k,v,o}.weight` ->
  `self_attention.{query,key,value,output}_projector.kernel`^T, and in block 0
  `...SelfAttention.relative_attention_bias.weight` -> `self_attention.relative_attention_bias`;
  `S.block.i.layer.0.layer_norm.weight` -> `self_attention_layer_norm.weight`;
- decoder only: `decoder.block.i.layer.1.EncDecAttention.*` -> `cross_attention.*`^T and
  `decoder.block.i.layer.1.layer_norm.weight` -> `cross_attention_layer_norm.weight`;
- the feed-forward block (`layer.1` in the encoder, `layer.2` in the decoder):
  `DenseReluDense.wi` (or, gated, `wi_0` and `wi_1`) -> `input_projector.kernel`^T (and
  `gate_projector.kernel`^T), `DenseReluDense.wo` -> `output_projector.kernel`^T,
  `layer_norm.weight` -> `layer_norm.weight`;
- `S.final_layer_norm.weight` -> `encoder_layer_norm.weight` / `decoder_layer_norm.weight`.

Examples:

>>> import keras_hub
>>> backbone = keras_hub.models.T5Backbone(vocabulary_size=40, num_layers=1, num_heads=2,
...     hidden_dim=16, intermediate_dim=32, key_value_dim=8, tie_embedding_weights=False)
>>> table = weight_table(backbone)
>>> len(table), table[0].name, table[0].variable.path
(29, 'shared.weight', 'token_embedding/embeddings')
>>> [(w.name, w.transposed) for w in table if w.name.startswith("encoder.block.0.layer.1")]
... # doctest: +NORMALIZE_WHITESPACE
[('encoder.block.0.layer.1.DenseReluDense.wi_0.weight', True),
 ('encoder.block.0.layer.1.DenseReluDense.wi_1.weight', True),
 ('encoder.block.0.layer.1.DenseReluDense.wo.weight', True),
 ('encoder.block.0.layer.1.layer_norm.weight', False)]
"""

from __future__ import annotations

from typing import NamedTuple

# Weights a checkpoint may hold beside the table's: copies of `shared.weight` (checked equal)
# and one transformers itself skips on load (an unused cross-attention bias of old files).
EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
SKIPPED = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
SHARED = "shared.weight"
LM_HEAD = "lm_head.weight"


class Weight(NamedTuple):
    """One checkpoint tensor and the backbone variable that holds it."""

    name: str
    variable: object  # a keras.Variable
    transposed: bool


def weight_table(backbone) -> list[Weight]:
    """Every weight of a built `T5Backbone`, named as in a `transformers` checkpoint.

    Args:
        backbone: A `keras_hub.models.T5Backbone` (its layers may be `dss_keras.lean_t5`'s).

    Returns:
        The checkpoint names with their variables, in a fixed order: embeddings first.
    """
    embedding = backbone.token_embedding
    table = [Weight(SHARED, embedding.embeddings, False)]
    if not embedding.tie_weights:
        table.append(Weight(LM_HEAD, embedding.reverse_embeddings, True))
    for stack, layers, final_norm in (
        ("encoder", backbone.encoder_transformer_layers, backbone.encoder_layer_norm),
        ("decoder", backbone.decoder_transformer_layers, backbone.decoder_layer_norm),
    ):
        for index, layer in enumerate(layers):
            table += _block(f"{stack}.block.{index}", layer)
        table.append(Weight(f"{stack}.final_layer_norm.weight", final_norm.weight, False))
    return table


def _block(prefix: str, layer) -> list[Weight]:
    parts = [("SelfAttention", layer.self_attention, layer.self_attention_layer_norm)]
    if layer.is_decoder:
        parts.append(("EncDecAttention", layer.cross_attention, layer.cross_attention_layer_norm))
    weights = []
    for number, (name, attention, norm) in enumerate(parts):
        weights += _attention(f"{prefix}.layer.{number}.{name}", attention)
        weights.append(Weight(f"{prefix}.layer.{number}.layer_norm.weight", norm.weight, False))
    feed_forward = f"{prefix}.layer.{len(parts)}"
    if layer.use_gated_activation:
        weights += [Weight(f"{feed_forward}.DenseReluDense.wi_0.weight",
                           layer.input_projector.kernel, True),
                    Weight(f"{feed_forward}.DenseReluDense.wi_1.weight",
                           layer.gate_projector.kernel, True)]
    else:
        weights.append(Weight(f"{feed_forward}.DenseReluDense.wi.weight",
                              layer.input_projector.kernel, True))
    weights += [Weight(f"{feed_forward}.DenseReluDense.wo.weight",
                       layer.output_projector.kernel, True),
                Weight(f"{feed_forward}.layer_norm.weight", layer.layer_norm.weight, False)]
    return weights


def _attention(prefix: str, attention) -> list[Weight]:
    weights = [Weight(f"{prefix}.{short}.weight", getattr(attention, f"{long}_projector").kernel,
                      True)
               for short, long in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "output"))]
    if attention.use_relative_attention_bias:
        weights.append(Weight(f"{prefix}.relative_attention_bias.weight",
                              attention.relative_attention_bias, False))
    return weights
