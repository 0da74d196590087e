"""A `transformers` T5 `config.json` as KerasHub `T5Backbone` arguments, and back.

Every field that changes what the model computes is either honoured or refused by name:

- `d_model`, `d_kv`, `d_ff`, `num_heads`, `num_layers`: the backbone's `hidden_dim`,
  `key_value_dim`, `intermediate_dim`, `num_heads`, `num_layers`;
- `num_decoder_layers`: must equal `num_layers` (KerasHub has one count for both stacks);
- `feed_forward_proj`: `activation` and `use_gated_activation` (see `ACTIVATIONS`;
  `"gated-gelu"` is the tanh approximation);
- `tie_word_embeddings` (or `scale_decoder_outputs`, which transformers 5 writes):
  `tie_embedding_weights`, i.e. a tied output layer with logits scaled by `d_model ** -0.5`
  (original T5), or an untied one without the scale (T5 v1.1, Flan-T5, mT5);
- `layer_norm_epsilon`, `dropout_rate`: `layer_norm_epsilon`, `dropout`;
- `vocab_size`: `vocabulary_size` (at least the tokenizer's pieces);
- `relative_attention_num_buckets`, `relative_attention_max_distance`: must be 32 and 128,
  which KerasHub fixes;
- `pad_token_id`, `eos_token_id`, `decoder_start_token_id`: must be the tokenizer's pad, end
  and pad ids (checked in `dss_keras.hf_t5.tokenizer`);
- `model_type`: `t5` or `mt5`; `umt5` is refused (it has a position bias in every layer).

`IGNORED` lists the fields that do not change the computation (initialisation, caching,
generation defaults); any other field is reported in a warning, not read.

Examples:

>>> arguments = backbone_arguments({"model_type": "t5", "vocab_size": 40, "d_model": 16,
...     "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2,
...     "feed_forward_proj": "gated-gelu", "tie_word_embeddings": False}, "config.json")
>>> arguments["use_gated_activation"], arguments["tie_embedding_weights"]
(True, False)
>>> arguments["activation"].__name__  # registered as "keras_hub>gelu_approximate"
'gelu_approximate'
>>> backbone_arguments({"model_type": "t5", "num_layers": 6, "num_decoder_layers": 3},
...                    "config.json")  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
ValueError: config.json: KerasHub's T5 has one layer count ... Received: num_decoder_layers=3
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

# Model types that share T5's weight layout and computation.
T5_FAMILY = ("t5", "mt5")
# Model types routed here only to be refused with their reason.
REFUSED_MODEL_TYPES = {
    "umt5": "umT5 gives every layer its own relative position bias; KerasHub's T5 computes "
            "one per stack, in its first layer",
}
# transformers' defaults (`T5Config`) for the fields a config.json may leave out.
DEFAULTS = {
    "vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
    "num_heads": 8, "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
    "dropout_rate": 0.1, "layer_norm_epsilon": 1e-6, "feed_forward_proj": "relu",
    "is_encoder_decoder": True, "pad_token_id": 0, "eos_token_id": 1,
    "decoder_start_token_id": 0, "tie_word_embeddings": True,
}
# transformers' activation names -> the Keras activation the backbone is built with. The first
# name of each row is the one written back; "gated-gelu" means the tanh approximation.
ACTIVATIONS = (
    (("relu",), "relu"),
    (("gelu_new", "gelu_pytorch_tanh"), "keras_hub>gelu_approximate"),
    (("gelu",), "gelu"),
    (("silu", "swish"), "silu"),
)
# Other Keras names of the same functions (what a backbone's config may hold after training).
KERAS_ALIASES = {"dss_keras>gelu_tanh": "keras_hub>gelu_approximate",
                 "keras_nlp>gelu_approximate": "keras_hub>gelu_approximate", "swish": "silu"}
# Fields that do not change the computation of the seq2seq LM.
IGNORED = frozenset({
    "architectures", "dense_act_fn", "is_gated_act",  # derived from feed_forward_proj
    "initializer_factor", "use_cache", "output_past", "n_positions", "transformers_version",
    "torch_dtype", "dtype", "task_specific_params", "_name_or_path", "classifier_dropout",
    "is_decoder", "gradient_checkpointing", "tokenizer_class", "bos_token_id", "max_length",
    "return_dict", "output_attentions", "output_hidden_states", "id2label", "label2id",
    # generation defaults
    "early_stopping", "length_penalty", "min_length", "no_repeat_ngram_size", "num_beams",
    "prefix",
})
_HONOURED = frozenset(DEFAULTS) | {"model_type", "num_decoder_layers", "scale_decoder_outputs"}


def backbone_arguments(config: dict[str, Any], source: str) -> dict[str, Any]:
    """The `keras_hub.models.T5Backbone` arguments of a `transformers` T5 config.

    Args:
        config: The parsed `config.json`.
        source: Names the file in error messages.

    Returns:
        The backbone's keyword arguments (`dtype` aside).

    Raises:
        ValueError: for a field KerasHub's T5 cannot express, naming it.
    """
    value = {**DEFAULTS, **config}.__getitem__
    model_type = config.get("model_type")
    if model_type in REFUSED_MODEL_TYPES:
        _refuse(source, REFUSED_MODEL_TYPES[model_type], "model_type", model_type)
    if model_type not in T5_FAMILY:
        _refuse(source, f"not a T5-family checkpoint (supported: {', '.join(T5_FAMILY)})",
                "model_type", model_type)
    if value("is_encoder_decoder") is not True:
        _refuse(source, "the seq2seq LM needs an encoder and a decoder", "is_encoder_decoder",
                value("is_encoder_decoder"))
    decoder_layers = config.get("num_decoder_layers")
    if decoder_layers is not None and decoder_layers != value("num_layers"):
        _refuse(source, "KerasHub's T5 has one layer count for the encoder and the decoder; "
                f"this checkpoint has {value('num_layers')} and {decoder_layers}",
                "num_decoder_layers", decoder_layers)
    for name in ("relative_attention_num_buckets", "relative_attention_max_distance"):
        if value(name) != DEFAULTS[name]:
            _refuse(source, f"KerasHub's T5 fixes {name} at {DEFAULTS[name]}", name, value(name))
    activation, gated = feed_forward(value("feed_forward_proj"), source)
    unread = sorted(set(config) - _HONOURED - IGNORED)
    if unread:
        logger.warning("%s: fields not read, unknown to dss_keras (if one changes what the "
                       "model computes, the KerasHub model differs): %s", source,
                       ", ".join(unread))
    return dict(
        vocabulary_size=int(value("vocab_size")), num_layers=int(value("num_layers")),
        num_heads=int(value("num_heads")), hidden_dim=int(value("d_model")),
        intermediate_dim=int(value("d_ff")), key_value_dim=int(value("d_kv")),
        dropout=float(value("dropout_rate")), activation=keras_activation(activation),
        use_gated_activation=gated, layer_norm_epsilon=float(value("layer_norm_epsilon")),
        tie_embedding_weights=scales_logits(config),
    )


def scales_logits(config: dict[str, Any]) -> bool:
    """Whether the decoder output is scaled by `d_model ** -0.5` (original T5's tied head).

    transformers 4 reads `tie_word_embeddings` (default true); transformers 5 writes
    `scale_decoder_outputs` beside a `tie_word_embeddings` it always sets to true.
    """
    if "scale_decoder_outputs" in config:
        return bool(config["scale_decoder_outputs"])
    return config.get("tie_word_embeddings", True) is not False


def keras_activation(name: str):
    """A Keras activation name -> what `T5Backbone` accepts (registered names as functions)."""
    if ">" not in name:
        return name
    import keras

    return keras.saving.get_registered_object(name)


def feed_forward(projection: str, source: str = "config.json") -> tuple[str, bool]:
    """`feed_forward_proj` ("relu", "gated-gelu", ...) -> (Keras activation name, gated).

    Examples:

    >>> feed_forward("gated-gelu"), feed_forward("relu"), feed_forward("gated-silu")
    (('keras_hub>gelu_approximate', True), ('relu', False), ('silu', True))
    """
    parts = str(projection).split("-")
    gated = parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        _refuse(source, "expected `{activation}` or `gated-{activation}`", "feed_forward_proj",
                projection)
    name = "gelu_new" if projection == "gated-gelu" else parts[-1]
    for names, keras_name in ACTIVATIONS:
        if name in names:
            return keras_name, gated
    supported = sorted(n for names, _ in ACTIVATIONS for n in names)
    _refuse(source, f"activation {name!r} is not one dss_keras maps to Keras (supported: "
            f"{', '.join(supported)})", "feed_forward_proj", projection)


def checkpoint_config(backbone_config: dict[str, Any], *, pad_token_id: int, eos_token_id: int,
                      extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The `config.json` of a `T5Backbone`'s config (`backbone.get_config()`).

    Args:
        backbone_config: The backbone's `get_config()`.
        pad_token_id, eos_token_id: The tokenizer's ids (the decoder starts from pad).
        extra: More fields, e.g. `task_specific_params`.

    Returns:
        A dict for `config.json` that `transformers.T5ForConditionalGeneration` loads.

    Raises:
        ValueError: for an activation with no `feed_forward_proj` spelling.
    """
    c = backbone_config
    config = {
        "architectures": ["T5ForConditionalGeneration"], "model_type": "t5",
        "vocab_size": c["vocabulary_size"], "d_model": c["hidden_dim"],
        "d_kv": c["key_value_dim"] or c["hidden_dim"] // c["num_heads"],
        "d_ff": c["intermediate_dim"], "num_layers": c["num_layers"],
        "num_decoder_layers": c["num_layers"], "num_heads": c["num_heads"],
        "relative_attention_num_buckets": DEFAULTS["relative_attention_num_buckets"],
        "relative_attention_max_distance": DEFAULTS["relative_attention_max_distance"],
        "dropout_rate": c["dropout"], "layer_norm_epsilon": c["layer_norm_epsilon"],
        "feed_forward_proj": feed_forward_projection(c["activation"],
                                                     c["use_gated_activation"]),
        "tie_word_embeddings": bool(c["tie_embedding_weights"]),
        "is_encoder_decoder": True, "pad_token_id": pad_token_id, "eos_token_id": eos_token_id,
        "decoder_start_token_id": pad_token_id, "initializer_factor": 1.0, "use_cache": True,
    }
    config.update(extra or {})
    return config


def feed_forward_projection(activation, gated: bool) -> str:
    """A serialized Keras activation and gating -> `feed_forward_proj`.

    Examples:

    >>> feed_forward_projection("keras_hub>gelu_approximate", True)
    'gated-gelu'
    >>> feed_forward_projection("relu", False)
    'relu'
    """
    # Registered functions serialize as {"class_name": "function", "config": "<name>", ...}.
    keras_name = activation.get("config") if isinstance(activation, dict) else activation
    keras_name = str(keras_name)
    keras_name = KERAS_ALIASES.get(keras_name, keras_name)
    names = next((names for names, k in ACTIVATIONS if k == keras_name), None)
    if names is None or (gated and names[0] == "gelu"):
        reason = ("transformers' 'gated-gelu' is the tanh approximation; a gated exact GELU "
                  "has no `feed_forward_proj`" if names else
                  "no `feed_forward_proj` of transformers computes it")
        raise ValueError(f"Cannot write the feed-forward activation: {reason}. "
                         f"Received: activation={activation!r}, use_gated_activation={gated}")
    if gated and names[0] == "gelu_new":
        return "gated-gelu"
    return f"gated-{names[0]}" if gated else names[0]


def _refuse(source: str, reason: str, field: str, value) -> None:
    raise ValueError(f"{source}: {reason}. Received: {field}={value!r}")
