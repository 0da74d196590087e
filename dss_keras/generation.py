"""Greedy generation of a `DistillStepByStep`'s labels and rationales, on every backend.

On TensorFlow, texts go through `dss_keras.decoding` (the exported
SavedModel's own decoding) in a `tf.function`; on other backends through
KerasHub's cached `generate_step` with its `GreedySampler`. Both tokenize
with the model's `MultiTaskPreprocessor` (TensorFlow ops) and give the same
labels (`tests/test_jax_backend.py`).
"""

from __future__ import annotations

from typing import Callable, Sequence

import keras
import numpy as np


def text_generator(model, task: str) -> Callable[[Sequence[str]], list[str]]:
    """A function from raw texts (no prefix) to the `task` outputs `model` generates.

    Args:
        model: A `DistillStepByStep`.
        task: `"label"` or `"rationale"`.

    Examples:

    >>> from dss_keras import testing
    >>> generate = text_generator(testing.tiny_model(), "label")
    >>> len(generate(["Dee has 3 rocks. How many rocks does Dee have?"]))
    1
    """
    if keras.backend.backend() == "tensorflow":
        return _tensorflow_generator(model, task)
    return _keras_hub_generator(model, task)


def _tensorflow_generator(model, task: str):
    """Texts -> generated texts by `dss_keras.decoding`'s greedy decoding, in a `tf.function`."""
    import tensorflow as tf

    from dss_keras.decoding import decoder_for

    pre, decoder = model.preprocessor, decoder_for(model.seq2seq_lm)
    generate = tf.function(lambda texts: decoder.generate_text(pre, texts, task),
                           reduce_retracing=True)
    return lambda texts: [s.decode("utf-8")
                          for s in generate(tf.constant(texts, tf.string)).numpy()]


def _keras_hub_generator(model, task: str):
    """Texts -> generated texts by KerasHub's `generate_step`, greedy (JAX, PyTorch).

    Inputs are padded to `max_input_length`, so that a compiled generation
    function is traced once per batch size. The wrapped LM's sampler becomes
    KerasHub's `GreedySampler`.
    """
    import keras_hub

    lm, pre = model.seq2seq_lm, model.preprocessor
    if not isinstance(getattr(lm, "sampler", None), keras_hub.samplers.GreedySampler):
        lm.sampler = keras_hub.samplers.GreedySampler()
        lm.generate_function = None
    generate = lm.make_generate_function()
    starts = np.array(pre.decoder_start_ids, "int32")
    length = len(starts) + pre.max_target_length(task)

    def run(texts):
        encoded = pre.encode_inputs(texts, task)
        padding = pre.max_input_length - encoded["encoder_token_ids"].shape[1]
        rows = len(texts)
        decoder_ids = np.full((rows, length), pre.pad_token_id, "int32")
        decoder_ids[:, :len(starts)] = starts
        decoder_mask = np.zeros((rows, length), "int32")
        decoder_mask[:, :len(starts)] = 1
        outputs = generate({
            "encoder_token_ids": np.pad(np.asarray(encoded["encoder_token_ids"]),
                                        [(0, 0), (0, padding)],
                                        constant_values=pre.pad_token_id),
            "encoder_padding_mask": np.pad(np.asarray(encoded["encoder_padding_mask"]),
                                           [(0, 0), (0, padding)]),
            "decoder_token_ids": decoder_ids,
            "decoder_padding_mask": decoder_mask,
        }, stop_token_ids=(pre.end_token_id,))
        generated = np.asarray(outputs["decoder_token_ids"])[:, len(starts):]
        return [s.decode("utf-8") for s in np.asarray(pre.decode(generated))]

    return run
