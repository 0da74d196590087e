"""transformers T5 checkpoints read into KerasHub: the committed fixtures against transformers.

The fixtures (`tests/fixtures/hf_t5/`, made by `make_fixtures.py` there) hold tiny random
checkpoints of original T5, T5 v1.1 and mT5 with what transformers computed from them.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest

from dss_keras import backbones, hf_t5
from dss_keras.decoding import greedy_decode

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "hf_t5")
VARIANTS = ("t5", "t5_v1_1", "mt5")
LOGITS_TOLERANCE = 1e-4


def reference(variant):
    with open(os.path.join(FIXTURES, variant, "reference.json"), encoding="utf-8") as file:
        expected = json.load(file)
    arrays = np.load(os.path.join(FIXTURES, variant, "reference.npz"))
    return expected, {name: arrays[name] for name in arrays.files}


def our_logits(lm, arrays):
    # transformers ran the decoder with no padding mask (causal only): every position is real.
    inputs = {name: arrays[name] for name in ("encoder_token_ids", "encoder_padding_mask",
                                              "decoder_token_ids")}
    inputs["decoder_padding_mask"] = np.ones_like(arrays["decoder_token_ids"])
    return keras.ops.convert_to_numpy(lm(inputs))


@pytest.fixture(scope="module", params=VARIANTS)
def loaded(request):
    return request.param, hf_t5.load_checkpoint(os.path.join(FIXTURES, request.param))


def test_logits_and_loss_match_transformers(loaded):
    variant, lm = loaded
    expected, arrays = reference(variant)
    logits = our_logits(lm, arrays)
    difference = np.abs(logits - arrays["logits"]).max()
    print(f"{variant}: max |logit difference| {difference:.2e}")
    assert difference < LOGITS_TOLERANCE
    mask = arrays["target_mask"].astype(bool)
    losses = keras.ops.convert_to_numpy(keras.losses.sparse_categorical_crossentropy(
        arrays["target_ids"], logits, from_logits=True))
    assert losses[mask].mean() == pytest.approx(expected["loss"], rel=1e-5)


def test_greedy_output_matches_transformers(loaded):
    variant, lm = loaded
    expected, arrays = reference(variant)
    greedy = np.array(expected["greedy_ids"])[:, 1:]  # without the decoder start id
    ours = greedy_decode(lm, arrays["encoder_token_ids"], arrays["encoder_padding_mask"],
                         decoder_start_ids=[0], end_token_id=1, pad_token_id=0,
                         max_length=greedy.shape[1]).numpy()
    np.testing.assert_array_equal(ours, greedy)


def test_tokenizer_gives_the_checkpoints_ids(loaded):
    variant, lm = loaded
    expected, _ = reference(variant)
    tokenizer = lm.preprocessor.tokenizer
    for key in ("encoder", "decoder"):
        ids = tokenizer(expected[f"{key}_texts"])  # a list of lists for a list of texts
        ours = [list(map(int, row)) + [tokenizer.end_token_id] for row in ids]
        assert ours == expected[f"{key}_ids"]


def test_architecture_follows_the_config(loaded):
    variant, lm = loaded
    backbone = lm.backbone
    assert backbone.tie_embedding_weights == (variant == "t5")
    assert backbone.use_gated_activation == (variant != "t5")
    assert backbone.layer_norm_epsilon == (1e-3 if variant == "mt5" else 1e-6)
    assert backbone.dropout == (0.0 if variant == "mt5" else 0.1)
    assert backbone.key_value_dim == (4 if variant == "mt5" else 8)
    assert backbone.vocabulary_size > lm.preprocessor.tokenizer.vocabulary_size()


def test_the_fixtures_tell_layer_norm_epsilon_apart(tmp_path):
    # mT5's fixture has layer_norm_epsilon 1e-3: read as T5's usual 1e-6 it would fail the test.
    directory = edited_copy(tmp_path, "mt5", config={"layer_norm_epsilon": 1e-6})
    _, arrays = reference("mt5")
    logits = our_logits(hf_t5.load_checkpoint(directory), arrays)
    assert np.abs(logits - arrays["logits"]).max() > 10 * LOGITS_TOLERANCE


def test_dropout_dtype_and_random_weights_can_be_chosen():
    path = os.path.join(FIXTURES, "t5_v1_1")
    lm = hf_t5.load_checkpoint(path, dropout=0.0, dtype="bfloat16")
    assert lm.backbone.dropout == 0.0
    assert lm.backbone.token_embedding.embeddings.dtype == "bfloat16"
    random = hf_t5.load_checkpoint(path, load_weights=False)
    _, arrays = reference("t5_v1_1")
    assert np.abs(our_logits(random, arrays) - arrays["logits"]).max() > 0.1


def test_fields_and_layouts_read_with_a_warning(tmp_path, caplog):
    # An unknown field is reported; a head stored as the embedding (transformers 5's way of
    # saving an untied T5 v1.1 whose head still equals it) is copied, with a warning.
    from safetensors.numpy import load_file, save_file

    directory = edited_copy(tmp_path, "mt5", config={"new_field": 1})
    path = os.path.join(directory, "model.safetensors")
    tensors = {k: v for k, v in load_file(path).items() if k != "lm_head.weight"}
    save_file(tensors, path, metadata={"format": "pt"})
    lm = hf_t5.load_checkpoint(directory)
    assert "fields not read" in caplog.text and "new_field" in caplog.text
    assert "has no lm_head.weight" in caplog.text
    embedding = lm.backbone.token_embedding
    np.testing.assert_array_equal(embedding.reverse_embeddings.numpy().T,
                                  embedding.embeddings.numpy())


def test_from_preset_routes_a_local_checkpoint_and_leaves_keras_hub_presets(tmp_path,
                                                                              monkeypatch):
    lm = backbones.from_preset(os.path.join(FIXTURES, "t5"))
    _, arrays = reference("t5")
    assert np.abs(our_logits(lm, arrays) - arrays["logits"]).max() < LOGITS_TOLERANCE

    calls = []

    def keras_hub_from_preset(preset, **kwargs):
        calls.append(preset)
        return "keras_hub's"

    import keras_hub

    monkeypatch.setattr(keras_hub.models.Seq2SeqLM, "from_preset", keras_hub_from_preset)
    os.makedirs(tmp_path / "bart")
    (tmp_path / "bart" / "config.json").write_text(json.dumps({"model_type": "bart"}))
    assert backbones.from_preset("t5_1.1_small") == "keras_hub's"
    assert backbones.from_preset(str(tmp_path / "bart")) == "keras_hub's"
    assert calls == ["t5_1.1_small", str(tmp_path / "bart")]


def test_a_run_config_may_name_a_checkpoint_directory_as_its_preset():
    from dss_keras.config import TrainConfig
    from dss_keras.training import build_seq2seq_lm

    config = TrainConfig(preset=os.path.join(FIXTURES, "mt5")).resolved()
    lm = build_seq2seq_lm(config, [], "unused: no vocabulary is trained for a checkpoint")
    assert lm.backbone.layer_norm_epsilon == 1e-3 and lm.backbone.num_heads == 3


def test_hf_handles_download_through_huggingface_hub(tmp_path, monkeypatch):
    import fnmatch

    from dss_keras.hf_t5 import hub

    requests = []

    def snapshot_download(repo_id, patterns):
        # The Hub, played by the fixtures: `google/<variant>` or `facebook/bart`.
        requests.append((repo_id, tuple(patterns)))
        folder = tmp_path / "cache" / repo_id
        folder.mkdir(parents=True, exist_ok=True)
        source = os.path.join(FIXTURES, repo_id.split("/")[1])
        if repo_id == "facebook/bart":
            (folder / "config.json").write_text(json.dumps({"model_type": "bart"}))
            return str(folder)
        for name in os.listdir(source):
            if any(fnmatch.fnmatch(name, pattern) for pattern in patterns):
                shutil.copy(os.path.join(source, name), folder / name)
        return str(folder)

    monkeypatch.setattr(hub, "_snapshot_download", snapshot_download)
    lm = backbones.from_preset("hf://google/t5_v1_1")
    _, arrays = reference("t5_v1_1")
    assert np.abs(our_logits(lm, arrays) - arrays["logits"]).max() < LOGITS_TOLERANCE
    assert requests[0] == ("google/t5_v1_1", ("config.json",))
    assert "reference.json" not in os.listdir(tmp_path / "cache" / "google" / "t5_v1_1")
    assert hub.checkpoint_directory("hf://facebook/bart") is None  # KerasHub's converters'

    def offline(repo_id, patterns):
        raise OSError("no network")

    monkeypatch.setattr(hub, "_snapshot_download", offline)
    with pytest.raises(RuntimeError, match=r"(?s)'hf://google/flan-t5-base'.*local_dir=DIR"):
        backbones.from_preset("hf://google/flan-t5-base")


# --- refused checkpoints --------------------------------------------------------------------


def edited_copy(tmp_path, variant="t5_v1_1", config=None, remove=(), tensors=None):
    """A copy of a fixture with config.json fields changed, files removed or tensors added."""
    directory = tmp_path / variant
    shutil.copytree(os.path.join(FIXTURES, variant), directory)
    if config:
        path = directory / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **config}))
    for name in remove:
        os.remove(directory / name)
    if tensors:
        from safetensors.numpy import load_file, save_file

        path = directory / "model.safetensors"
        save_file({**load_file(path), **tensors}, path, metadata={"format": "pt"})
    return str(directory)


@pytest.mark.parametrize("field, value, reason", [
    ("num_decoder_layers", 1, "one layer count"),
    ("relative_attention_num_buckets", 64, "fixes relative_attention_num_buckets at 32"),
    ("relative_attention_max_distance", 256, "fixes relative_attention_max_distance at 128"),
    ("model_type", "umt5", "its own relative position bias"),
    ("model_type", "bart", "not a T5-family"),
    ("feed_forward_proj", "gated-mish", "activation 'mish'"),
    ("feed_forward_proj", "relu-gelu", "gated-"),
    ("is_encoder_decoder", False, "an encoder and a decoder"),
    ("eos_token_id", 2, "eos_token_id should be 1"),
    ("decoder_start_token_id", 1, "decoder_start_token_id should be 0"),
    ("pad_token_id", 3, "pad_token_id should be 0"),
    ("vocab_size", 40, "fewer rows than spiece.model has pieces"),
])
def test_a_config_keras_hub_cannot_express_is_refused_by_name(tmp_path, field, value, reason):
    directory = edited_copy(tmp_path, config={field: value})
    with pytest.raises(ValueError, match=reason) as error:
        hf_t5.load_checkpoint(directory)
    assert str(error.value).endswith(f"Received: {field}={value!r}")
    assert "config.json" in str(error.value)


def test_weights_that_do_not_fit_are_refused_by_name(tmp_path):
    bias = np.zeros((32, 2), "float32")
    directory = edited_copy(tmp_path, "t5", tensors={
        "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight": bias})
    with pytest.raises(ValueError, match=r"umT5.*encoder\.block\.1\.layer\.0\.SelfAttention"):
        hf_t5.load_checkpoint(directory)

    head = np.ones((78, 16), "float32")
    directory = edited_copy(tmp_path / "tied", "t5", tensors={"lm_head.weight": head})
    with pytest.raises(ValueError, match=r"lm_head.weight differs.*Received: tensor=lm_head"):
        hf_t5.load_checkpoint(directory)

    directory = edited_copy(tmp_path / "shape", "t5", config={"d_ff": 30})
    with pytest.raises(ValueError, match=r"DenseReluDense.wi.weight has the wrong shape.*"
                                         r"\(expected \(30, 16\)\)\. Received: shape=\(24, 16\)"):
        hf_t5.load_checkpoint(directory)


def test_a_tokenizer_json_without_spiece_model_is_refused(tmp_path):
    directory = edited_copy(tmp_path, remove=["spiece.model"])
    with open(os.path.join(directory, "tokenizer.json"), "w") as file:
        file.write("{}")
    with pytest.raises(FileNotFoundError, match="tokenizer.json but no spiece.model"):
        hf_t5.load_checkpoint(directory)


def test_pytorch_weights_need_pytorch_or_the_conversion_command(tmp_path, monkeypatch):
    directory = edited_copy(tmp_path, "t5", remove=["model.safetensors"])
    open(os.path.join(directory, "pytorch_model.bin"), "wb").close()
    monkeypatch.setitem(__import__("sys").modules, "torch", None)  # as if not installed
    with pytest.raises(ImportError, match=r"(?s)pip install torch.*save_pretrained"):
        hf_t5.load_checkpoint(directory)


def test_pytorch_weights_are_read_with_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file

    directory = edited_copy(tmp_path, "t5", remove=["model.safetensors"])
    state = load_file(os.path.join(FIXTURES, "t5", "model.safetensors"))
    torch.save(state, os.path.join(directory, "pytorch_model.bin"))
    _, arrays = reference("t5")
    lm = hf_t5.load_checkpoint(directory)
    assert np.abs(our_logits(lm, arrays) - arrays["logits"]).max() < LOGITS_TOLERANCE
