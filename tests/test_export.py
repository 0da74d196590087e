"""The serving SavedModel: runs with TensorFlow + TF Text only, matches Python-side decoding."""

import json
import os
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import tensorflow as tf

from dss_keras import decoding, export, label_scorer, testing
from dss_keras.export_precision import with_precision
from dss_keras.label_scorer import LabelSet
from dss_keras.preprocessor import MultiTaskPreprocessor

EDGE_TEXTS = [
    "",
    " ",
    "Ünïcödé: Zoë hat 3 Äpfel. 日本語 😀 ¿Cuántos?",
    "Ana has 3 cups. " * 200,  # far past max_input_length: truncated
]
# Every op the export uses today; all are in TF Serving 2.20 / TF Text 2.20. A new
# op fails this test on purpose: check that the server has it, then add it here.
KNOWN_OPS = {
    "Abs", "AddV2", "All", "ArgMax", "Assert", "AssignVariableOp", "BatchMatMulV2",
    "Cast", "ConcatV2", "Const", "Cumsum", "DisableCopyOnRead", "Equal", "ExpandDims",
    "Fill", "GatherV2", "Greater", "Identity", "If", "Less", "Log", "LogicalAnd",
    "LogicalNot", "LogicalOr", "MatMul", "Mean", "MergeV2Checkpoints", "Minimum", "Mul",
    "Neg", "NoOp", "NotEqual", "OnesLike", "Pack", "Pad", "PartitionedCall",
    "Placeholder", "Pow", "Prod", "RaggedGather", "RaggedRange", "RaggedTensorToTensor",
    "Range", "ReadVariableOp", "RealDiv", "Reshape", "RestoreV2", "Rsqrt", "SaveV2",
    "Select", "SelectV2", "SentencepieceDetokenizeOp", "SentencepieceOp",
    "SentencepieceTokenizeOp", "Shape", "ShardedFilename", "Softmax", "SplitV", "Square",
    "Squeeze",
    "StatefulPartitionedCall", "StatelessIf", "StatelessWhile", "StaticRegexFullMatch",
    "StridedSlice", "StringJoin", "StringStrip", "Sub", "Sum", "Tanh", "Tile", "Transpose",
    "VarHandleOp", "Where", "While", "ZerosLike",
    # The closed-set scorer, the UTF-8 check and int8 (Keras' input quantizer, int8 x int8
    # products): core TensorFlow ops with CPU kernels, in TF Serving 2.20's runtime.
    "BatchMatMulV3", "DivNoNan", "Exp", "IsFinite", "LessEqual", "MatrixBandPart", "Max",
    "Maximum", "PadV2", "Round", "Size", "StopGradient", "UnicodeTranscode",
    "BroadcastTo", "DenseBincount", "StaticRegexReplace", "StringSplitV2", "UnsortedSegmentSum",
    "GatherNd", "ScatterNd",
}  # fmt: skip

# Runs in a fresh interpreter that imports only tensorflow and tensorflow_text,
# with XLA off. REST bodies are turned into tensors as TF Serving's REST API
# does for a one-input, one-output signature, and answered in its formats.
CLIENT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_XLA_FLAGS"] = "--tf_xla_auto_jit=-1 --tf_xla_cpu_global_jit=false"
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    tf.config.optimizer.set_jit(False)

    def rest(loaded, body):
        request = json.loads(body)
        signature = loaded.signatures[request.get("signature_name", "serving_default")]
        (input_name,) = signature.structured_input_signature[1]
        (output_name,) = signature.structured_outputs
        if "instances" in request:
            rows = request["instances"]
            rows = [row[input_name] if isinstance(row, dict) else row for row in rows]
            values = signature(**{input_name: tf.constant(rows, tf.string)})[output_name]
            return json.dumps({"predictions": [v.decode() for v in values.numpy()]})
        inputs = request["inputs"]
        columns = inputs[input_name] if isinstance(inputs, dict) else inputs
        values = signature(**{input_name: tf.constant(columns, tf.string)})[output_name]
        return json.dumps({"outputs": [v.decode() for v in values.numpy()]})

    job = json.load(open(sys.argv[1]))
    loaded = tf.saved_model.load(job["path"])
    results = {"calls": [], "rest": []}
    for call in job["calls"]:
        signature = loaded.signatures[call["signature"]]
        outputs = signature(text=tf.constant(call["texts"], tf.string))
        (output,) = [outputs["label"]] if "label" in outputs else outputs.values()
        results["calls"].append([v.decode() for v in output.numpy()])
    results["rest"] = [rest(loaded, body) for body in job["rest"]]
    results["modules"] = sorted(
        name for name in ("keras", "keras_hub", "dss_keras") if name in sys.modules
    )
    json.dump(results, open(sys.argv[2], "w"))
    """
)


@pytest.fixture(scope="module")
def model():
    lm = testing.tiny_seq2seq_lm(num_layers=2)
    pre = MultiTaskPreprocessor.from_seq2seq_lm(
        lm, max_input_length=48, max_label_length=10, max_rationale_length=24
    )
    return types.SimpleNamespace(seq2seq_lm=lm, preprocessor=pre, name="toy")


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    base = tmp_path_factory.mktemp("saved_models") / "toy"
    return export.export_for_serving(model, base, label_set="choices")


# Multiple-choice inputs in CQA's layout, and one without choices.
CHOICE_TEXTS = [
    "Dee has 3 rocks. How many?\nAnswer Choices:\n(a) 3\n(b) 4 rocks\n(c) Gus",
    "Ana has 2 cups.\nAnswer Choices:\n(a) 2\n(b) 5\n(c) 7\n(d) no cups\n(e) Dee",
    "Nothing to choose from here.",
]


@pytest.fixture(scope="module")
def texts():
    return [record.input for record in testing.toy_records(300, seed=7)] + EDGE_TEXTS


def python_side(model, texts, task="label"):
    """What the model gives in Python: `greedy_decode` + `preprocessor.decode`."""
    pre = model.preprocessor
    inputs = pre.encode_inputs(texts, task)
    ids = decoding.greedy_decode(
        model.seq2seq_lm,
        inputs["encoder_token_ids"],
        inputs["encoder_padding_mask"],
        decoder_start_ids=pre.decoder_start_ids,
        end_token_id=pre.end_token_id,
        pad_token_id=pre.pad_token_id,
        max_length=pre.max_target_length(task),
    )
    return [text.decode("utf-8") for text in pre.decode(ids).numpy()]


def rest_bodies(texts):
    return [
        json.dumps({"instances": texts}),
        json.dumps(
            {"signature_name": "serving_default", "instances": [{"text": t} for t in texts]}
        ),
        json.dumps({"inputs": {"text": texts}}),
        json.dumps({"signature_name": "explain", "inputs": texts}),
    ]


@pytest.fixture(scope="module")
def served(exported, texts, tmp_path_factory):
    """One subprocess answers every call; returns its answers."""
    folder = tmp_path_factory.mktemp("client")
    calls = [
        {"signature": "serving_default", "texts": texts},
        {"signature": "serving_default", "texts": texts[:1]},
        {"signature": "serving_default", "texts": texts[:256]},
        {"signature": "explain", "texts": texts[:40] + EDGE_TEXTS},
        {"signature": "serving_default", "texts": EDGE_TEXTS},
        {"signature": "choose_label", "texts": CHOICE_TEXTS + EDGE_TEXTS},
    ]
    job = {"path": str(exported), "calls": calls, "rest": rest_bodies(texts[:5])}
    (folder / "job.json").write_text(json.dumps(job))
    (folder / "client.py").write_text(CLIENT)
    paths = [str(folder / name) for name in ("client.py", "job.json", "out.json")]
    run = subprocess.run(
        [sys.executable, *paths],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads((folder / "out.json").read_text())


def test_layout_and_metadata(exported):
    assert os.path.basename(exported) == "1"
    assert os.path.exists(os.path.join(exported, "saved_model.pb"))
    metadata = json.loads(open(os.path.join(exported, export.METADATA_PATH)).read())
    assert metadata["decoder"] == "T5Decoder" and metadata["max_label_length"] == 10
    assert metadata["precision"] == "float32" and metadata["label_set"] == "choices"
    assert metadata["invalid_utf8"] == "refused"
    assert sorted(metadata["signatures"]) == ["choose_label", "explain", "serving_default"]


def test_choose_label_is_the_python_side_choice(model, served):
    decoder = decoding.decoder_for(model.seq2seq_lm)
    pre = model.preprocessor
    expected = label_scorer.choose_label(
        decoder, pre, CHOICE_TEXTS + EDGE_TEXTS, LabelSet(choices=True),
        lambda texts: decoder.generate_text(pre, texts, "label"))["label"]
    labels = served["calls"][5]
    assert labels == [label.decode() for label in expected.numpy()]
    assert labels[0] in ("3", "4 rocks", "Gus") and labels[1] in ("2", "5", "7", "no cups", "Dee")
    assert labels[2:] == python_side(model, CHOICE_TEXTS[2:] + EDGE_TEXTS)


def test_choose_label_probabilities_and_candidates(exported):
    loaded = tf.saved_model.load(exported)
    chosen = loaded.signatures["choose_label"](text=tf.constant(CHOICE_TEXTS))
    probabilities = chosen["probabilities"].numpy()
    assert probabilities.shape == (3, 5)
    np.testing.assert_allclose(probabilities[:2].sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities[0, 3:] == 0).all() and (probabilities[2] == 0).all()
    candidates = chosen["candidates"].numpy()
    assert candidates[0].tolist() == [b"3", b"4 rocks", b"Gus", b"", b""]
    best = candidates[np.arange(2), probabilities[:2].argmax(axis=1)]
    assert chosen["label"].numpy()[:2].tolist() == best.tolist()


def test_text_that_is_not_utf8_is_refused_as_the_cli_refuses_it(exported, monkeypatch):
    """The SavedModel and `dss-keras predict` decide alike: bytes that are not UTF-8 are refused."""
    import argparse
    import io

    from dss_keras import cli

    loaded = tf.saved_model.load(exported)
    for name in ("serving_default", "explain", "choose_label"):
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"not valid UTF-8.*\[1\]"):
            loaded.signatures[name](text=tf.constant([b"ok", b"caf\xe9"]))
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(b"ok\ncaf\xe9\n")))
    with pytest.raises(ValueError, match="<stdin>:2: not valid UTF-8"):
        cli._utf8_texts(argparse.Namespace(texts=[]))
    # Valid UTF-8 that only looks odd is answered.
    odd = ["\ufffd replacement", "\ufeffbyte order mark", "nul \x00 inside"]
    assert len(loaded.signatures["serving_default"](text=tf.constant(odd))["label"]) == 3


def test_runs_without_keras_hub_or_dss_keras(served):
    assert "keras_hub" not in served["modules"] and "dss_keras" not in served["modules"]


def test_labels_equal_python_side_decoding(model, served, texts):
    expected = python_side(model, texts)
    assert served["calls"][0] == expected
    assert len(set(expected)) > 20, "random weights gave (almost) one answer"


def test_batches_of_1_and_256(model, served, texts):
    assert served["calls"][1] == python_side(model, texts[:1])
    assert served["calls"][2] == python_side(model, texts[:256])


def test_rationales_and_edge_inputs(model, served, texts):
    assert served["calls"][3] == python_side(model, texts[:40] + EDGE_TEXTS, "rationale")
    edge = served["calls"][4]
    assert edge == python_side(model, EDGE_TEXTS)
    assert all(isinstance(label, str) for label in edge)


def test_long_input_is_truncated(model, exported):
    loaded = tf.saved_model.load(exported)
    serving = export.ServingModule(model.seq2seq_lm, model.preprocessor).preprocessor
    assert isinstance(serving.tokenizer, export.GraphSentencePiece)
    ids = serving.encode_inputs(tf.constant(EDGE_TEXTS), "label")["encoder_token_ids"]
    assert ids.shape[1] == model.preprocessor.max_input_length
    reference = model.preprocessor.encode_inputs(EDGE_TEXTS, "label")["encoder_token_ids"]
    tf.debugging.assert_equal(ids, reference)
    labels = loaded.signatures["serving_default"](text=tf.constant(EDGE_TEXTS[-1:]))["label"]
    assert labels.shape == (1,)


def test_rest_bodies_in_both_forms(model, served, texts):
    labels = python_side(model, texts[:5])
    rationales = python_side(model, texts[:5], "rationale")
    row, row_named, columnar, columnar_explain = [json.loads(body) for body in served["rest"]]
    assert row == row_named == {"predictions": labels}
    assert columnar == {"outputs": labels}
    assert columnar_explain == {"outputs": rationales}


def test_no_xla_anywhere(exported):
    op_types = export.verify_saved_model(exported)
    assert op_types <= KNOWN_OPS, f"ops to check against TF Serving: {op_types - KNOWN_OPS}"
    assert {"SentencepieceTokenizeOp", "SentencepieceDetokenizeOp", "While"} <= op_types
    # The same walk, through the loaded functions' graphs.
    loaded = tf.saved_model.load(exported)
    for name in export.SIGNATURES:
        graph = loaded.signatures[name].graph.as_graph_def()
        functions = list(graph.library.function)
        assert any("while_body" in f.signature.name for f in functions)
        for nodes, attrs in [(graph.node, {})] + [(f.node_def, f.attr) for f in functions]:
            assert not set(attrs) & set(export.XLA_ATTRIBUTES)
            for node in nodes:
                assert "xla" not in node.op.lower(), node.op
                assert not set(node.attr) & set(export.XLA_ATTRIBUTES), node.name


def test_verify_rejects_xla(tmp_path):
    module = tf.Module()
    module.f = tf.function(
        lambda x: x * 2, jit_compile=True, input_signature=[tf.TensorSpec([None])]
    )
    tf.saved_model.save(module, str(tmp_path), signatures=module.f)
    with pytest.raises(ValueError, match="XLA"):
        export.verify_saved_model(tmp_path)


def test_saved_model_cli_shows_both_signatures(exported):
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    shown = subprocess.run(
        [cli, "show", "--dir", str(exported), "--all"], capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    for expected in ("signature_def['serving_default']", "signature_def['explain']",
                     "inputs['text']", "outputs['label']", "outputs['rationale']", "DT_STRING"):
        assert expected in shown.stdout  # fmt: skip


def test_load_and_predict(model, exported, texts):
    base = os.path.dirname(exported)
    assert export.load_and_predict(base, texts[:5]) == python_side(model, texts[:5])
    assert export.load_and_predict(exported, texts[:3], "explain", batch_size=2) == python_side(
        model, texts[:3], "rationale"
    )
    with pytest.raises(ValueError, match="no signature 'nope'"):
        export.load_and_predict(exported, ["x"], signature="nope")


def test_versions_count_up_and_are_never_replaced(model, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = export.export_for_serving(model)  # saved_models/<model.name>/<next>
    assert first == os.path.join("saved_models", "toy", "1")
    os.makedirs(os.path.join("saved_models", "toy", "not-a-version"))
    second = export.export_for_serving(model, "saved_models/toy")
    assert os.path.basename(second) == "2"
    before = sorted(os.listdir(second))
    with pytest.raises(FileExistsError, match="never replaced"):
        export.export_for_serving(model, "saved_models/toy", version=2)
    assert sorted(os.listdir(second)) == before
    assert export.versions("saved_models/toy") == [1, 2]
    assert export.next_version("saved_models/toy") == 3


@pytest.mark.parametrize("version", [0, -1, "3", 2.0, True])
def test_rejects_bad_versions(model, tmp_path, version):
    with pytest.raises(ValueError, match="positive integer"):
        export.export_for_serving(model, tmp_path, version=version)


def test_failed_write_leaves_nothing(model, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        export.export_for_serving(model, tmp_path / "toy")
    assert os.listdir(tmp_path / "toy") == []


def test_needs_a_sentencepiece_tokenizer(model):
    pre = types.SimpleNamespace(tokenizer=object())
    with pytest.raises(ValueError, match="SentencePiece"):
        export.ServingModule(model.seq2seq_lm, pre)


def test_matches_distill_step_by_step_predict_labels(model, exported, texts):
    from dss_keras.model import DistillStepByStep

    pre = model.preprocessor
    dss = DistillStepByStep(
        model.seq2seq_lm,
        max_input_length=pre.max_input_length,
        max_label_length=pre.max_label_length,
        max_rationale_length=pre.max_rationale_length,
    )
    batch = texts[:20] + EDGE_TEXTS
    assert dss.predict_labels(batch, batch_size=len(batch)) == export.load_and_predict(
        exported, batch
    )


LOAD_QUIETLY = textwrap.dedent(
    """
    import sys
    import tensorflow as tf
    import tensorflow_text  # noqa: F401
    tf.zeros(1).numpy()  # TensorFlow's runtime starts (and logs its device probes) here
    print("LOADING", file=sys.stderr, flush=True)
    loaded = tf.saved_model.load(sys.argv[1])
    print("LOADED", file=sys.stderr, flush=True)
    """
)


@pytest.mark.parametrize("precision", ["float32", pytest.param("bfloat16", marks=pytest.mark.slow),
                                       pytest.param("int8", marks=pytest.mark.slow)])
def test_export_of_a_lean_model_holds_no_custom_gradient_and_loads_silently(tmp_path, precision):
    """`DistillStepByStep` trains T5 through layers with custom gradients; serving has none.

    At every precision: Keras' int8 layers compute through a custom gradient too.
    """
    from tensorflow.core.protobuf import saved_model_pb2

    from dss_keras.tf_fast_path.lean_t5 import T5LayerNormKeepingInput

    model = testing.tiny_model()
    texts = [record.input for record in testing.toy_records(6, seed=3)]
    lm = with_precision(model.seq2seq_lm, precision)
    expected = [label.decode() for label in decoding.decoder_for(lm, frozen=True).generate_text(
        model.preprocessor, texts, "label").numpy()]
    path = export.export_for_serving(model, tmp_path / "toy", precision=precision,
                                     label_set="yes,no")
    assert isinstance(model.seq2seq_lm.backbone.encoder_layer_norm, T5LayerNormKeepingInput)
    saved = saved_model_pb2.SavedModel()
    saved.ParseFromString((tmp_path / "toy" / "1" / "saved_model.pb").read_bytes())
    graph = saved.meta_graphs[0].graph_def
    nodes = [*graph.node, *(n for f in graph.library.function for n in f.node_def)]
    assert not [n.name for n in nodes if "_gradient_op_type" in n.attr]
    assert export.load_and_predict(path, texts) == expected
    assert set(export.load_and_predict(path, texts, "choose_label")) <= {"yes", "no"}
    op_types = export.verify_saved_model(path)
    assert op_types <= KNOWN_OPS, f"ops to check against TF Serving: {op_types - KNOWN_OPS}"
    metadata = json.loads((tmp_path / "toy" / "1" / export.METADATA_PATH).read_text())
    assert metadata["precision"] == precision and metadata["label_set"] == "yes,no"

    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    run = subprocess.run([sys.executable, "-c", LOAD_QUIETLY, path], capture_output=True,
                         text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    during = run.stderr.split("LOADING\n", 1)[1].split("LOADED", 1)[0]
    assert during.strip() == "" and run.stdout == ""


@pytest.mark.slow
def test_reduced_precision_files_are_smaller(model, exported, tmp_path):
    def variables_bytes(path):
        folder = os.path.join(path, "variables")
        return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))

    half = export.export_for_serving(model, tmp_path / "half", precision="bfloat16")
    int8 = export.export_for_serving(model, tmp_path / "int8", precision="int8")
    assert variables_bytes(half) < 0.6 * variables_bytes(exported)
    assert variables_bytes(int8) < 0.4 * variables_bytes(exported)


def test_rejects_an_unknown_precision_or_label_set(model, tmp_path):
    with pytest.raises(ValueError, match="Received: precision='int4'"):
        export.export_for_serving(model, tmp_path / "a", precision="int4")
    with pytest.raises(ValueError, match="at least two distinct"):
        export.export_for_serving(model, tmp_path / "b", label_set="yes")
    assert export.versions(tmp_path / "a") == [] and export.versions(tmp_path / "b") == []
