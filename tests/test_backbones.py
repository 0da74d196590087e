import keras
import keras_hub
import numpy as np
import pytest

from dss_keras import backbones, testing
from dss_keras.data import make_dataset
from dss_keras.data.records import Record
from dss_keras.model import DistillStepByStep
from dss_keras.tf_fast_path.task_losses import packs_rows


def test_tiny_t5_is_t5_v1_1_shaped_with_spread_embeddings():
    lm = testing.tiny_seq2seq_lm()
    backbone = lm.backbone
    assert backbone.use_gated_activation and not backbone.tie_embedding_weights
    # The gated feed-forward's activated branch: input_projector = act(x @ kernel).
    for layer in (backbone.encoder_transformer_layers[0], backbone.decoder_transformer_layers[0]):
        projector = layer.input_projector
        x = np.random.default_rng(0).normal(0, 8, (16, backbone.hidden_dim)).astype("float32")
        pre_activation = x @ keras.ops.convert_to_numpy(projector.kernel)
        applied = keras.ops.convert_to_numpy(projector(x))
        tanh_gelu = keras.ops.convert_to_numpy(keras.activations.gelu(pre_activation, True))
        exact_gelu = keras.ops.convert_to_numpy(keras.activations.gelu(pre_activation, False))
        assert np.abs(pre_activation).max() > 1.0  # where the two GELUs differ
        np.testing.assert_allclose(applied, tanh_gelu, atol=1e-5)
        assert np.abs(applied - exact_gelu).max() > 1e-4  # not the exact GELU
    embeddings = backbone.token_embedding.embeddings.numpy()
    # N(0, 1), not KerasHub's TruncatedNormal(mean=1.0): rows differ.
    assert abs(embeddings.mean()) < 0.1 and 0.8 < embeddings.std() < 1.2
    assert np.linalg.norm(embeddings[3] - embeddings[4]) > 1.0


def test_a_second_tiny_t5_leaves_the_first_tokenizer_working():
    first = backbones.tiny_t5(proto=testing.toy_vocabulary(), num_layers=1, hidden_dim=16,
                              intermediate_dim=32, num_heads=2)
    second = backbones.tiny_t5(proto=testing.toy_vocabulary(), num_layers=1, hidden_dim=16,
                               intermediate_dim=32, num_heads=2)
    # Seeded alike, drawn alike; and the first tokenizer still runs in a tf.data map
    # (TensorFlow's global seed would have deleted its SentencePiece resource).
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    import tensorflow as tf

    texts = tf.data.Dataset.from_tensor_slices(["Dee has 12 rocks."]).map(first.preprocessor.tokenizer)
    assert next(iter(texts)).shape[0] > 0


def test_from_preset_names_the_preset_when_it_cannot_load(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(keras_hub.models.Seq2SeqLM, "from_preset", offline)
    with pytest.raises(RuntimeError, match=r"(?s)'t5_1.1_base'.*save_to_preset.*pass its path"):
        backbones.from_preset("t5_1.1_base")


def test_local_preset_directory_round_trip(tmp_path):
    lm = testing.tiny_seq2seq_lm()
    lm.save_to_preset(str(tmp_path / "preset"))
    restored = backbones.from_preset(str(tmp_path / "preset"))
    for a, b in zip(lm.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def _tiny_bart():
    words = ["Ġ" + w for w in "ana has cups then finds more how many does have now".split()]
    letters = list("abcdefghijklmnopqrstuvwxyz0123456789.?") + ["Ġ"]
    vocabulary = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for token in letters + words:
        vocabulary.setdefault(token, len(vocabulary))
    merges = []
    for word in words:
        pieces = list(word)
        while len(pieces) > 1:
            merges.append(f"{pieces[0]} {pieces[1]}")
            pieces = [pieces[0] + pieces[1]] + pieces[2:]
            vocabulary.setdefault(pieces[0], len(vocabulary))
    merges = list(dict.fromkeys(merges))
    tokenizer = keras_hub.models.BartTokenizer(vocabulary=vocabulary, merges=merges)
    backbone = keras_hub.models.BartBackbone(
        vocabulary_size=len(vocabulary), num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32, max_sequence_length=64,
    )
    preprocessor = keras_hub.models.BartSeq2SeqLMPreprocessor(tokenizer=tokenizer)
    return keras_hub.models.BartSeq2SeqLM(backbone=backbone, preprocessor=preprocessor)


@pytest.mark.slow
def test_bart_backbone_trains_and_generates():
    model = DistillStepByStep(_tiny_bart(), max_input_length=48, max_label_length=4,
                              max_rationale_length=16, examples_per_row=4)
    assert not packs_rows(model)  # absolute positions: BART batches are not packed
    pre = model.preprocessor
    # BART's layout: encoder `<s> ... </s>`, decoder starts from `</s> <s>`.
    assert pre.encoder_start_ids == [0] and pre.decoder_start_ids == [2, 0]
    assert (pre.end_token_id, pre.pad_token_id) == (2, 1)
    records = [Record(str(i), "ana has 3 cups. how many does ana have now?", "3",
                      "ana has 3.") for i in range(8)]
    dataset, _ = make_dataset(records, pre, batch_size=4)
    x, y, w = next(iter(dataset))
    assert x["label"]["encoder_token_ids"][0, 0] == 0
    assert list(x["label"]["decoder_token_ids"][0, :2].numpy()) == [2, 0]
    model.compile(optimizer=keras.optimizers.AdamW(1e-2))
    history = model.fit(dataset, epochs=3, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert len(model.predict_labels(["ana has 2 cups."])) == 1
