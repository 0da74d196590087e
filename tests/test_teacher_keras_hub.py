"""The KerasHub backend with a tiny randomly initialised causal LM (nothing downloaded)."""

import json

import pytest

from dss_keras.teacher import extract

from teacher_helpers import write_nli_inputs


def tiny_gpt2():
    import keras_hub
    from keras_hub.src.tokenizers.byte_pair_tokenizer import bytes_to_unicode

    _, characters = bytes_to_unicode()
    vocabulary = {"<|endoftext|>": 0}
    for character in characters:
        vocabulary[chr(character) if isinstance(character, int) else character] = len(vocabulary)
    vocabulary["Ġt"] = len(vocabulary)
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["Ġ t"])
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=4096)
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer=tokenizer)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=preprocessor)


@pytest.mark.slow
def test_tiny_causal_lm_writes_and_reports(tmp_path):
    from dss_keras.teacher.backends.keras_hub import KerasHubBackend

    backend = KerasHubBackend(tiny_gpt2(), batch_size=4, seed=0)
    inputs = write_nli_inputs(tmp_path / "in.jsonl", 3)
    output = tmp_path / "out.jsonl"
    report = extract(inputs, output, "esnli", backend, samples=2, temperature=0.7,
                     max_tokens=6)
    lines = [json.loads(line) for line in open(output)]
    assert report.written == len(lines) == 3 and not report.request_failures
    for line in lines:
        teacher = line["teacher"]
        assert teacher["backend"] == "keras-hub" and len(teacher["completions"]) == 2
        assert all(isinstance(text, str) for text in teacher["completions"])
        assert teacher["usage"]["prompt_tokens"] > 0
    # A random model does not answer in the format: every record is a reported failure.
    assert sum(report.parse_failures.values()) == 3
    assert report.accuracy == 0.0
