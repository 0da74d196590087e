"""The GPU benchmark's pieces that run here: its token batches, its plan and its report.

The benchmark itself runs on a GPU machine (`benchmarks/gpu_train_step.py`);
its `--dry-run` checks the rest on a CPU in minutes, too long for the suite.
"""


import numpy as np
import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def benchmark():
    return load_benchmark("gpu_train_step")


def test_carried_batches_are_the_pipelines_bounded_batches(benchmark, tmp_path):
    import keras_hub

    from dss_keras import testing
    from dss_keras.data import make_dataset
    from dss_keras.preprocessor import MultiTaskPreprocessor

    records, spm = testing.toy_records(40), testing.toy_vocabulary()
    path = tmp_path / "batches.npz"
    shapes = benchmark.save_batches(records, spm, path, count=5, batch_size=8)
    loaded = benchmark.load_batches(path)
    pre = MultiTaskPreprocessor(keras_hub.models.T5Tokenizer(proto=spm),
                                max_input_length=benchmark.MAX_LENGTH,
                                max_label_length=benchmark.MAX_LENGTH,
                                max_rationale_length=benchmark.MAX_LENGTH)
    dataset, _ = make_dataset(records, pre, batch_size=8, seed=0, repeat=True,
                              drop_remainder=True, bounded_shapes=True)
    assert sum(shapes.values()) == len(loaded) == 5
    for (x, y, w), (lx, ly, lw) in zip(dataset.take(5).as_numpy_iterator(), loaded):
        for task in x:
            for key in x[task]:
                np.testing.assert_array_equal(lx[task][key], x[task][key])
                assert lx[task][key].dtype == np.int32
            np.testing.assert_array_equal(ly[task], y[task])
            np.testing.assert_array_equal(lw[task], w[task])
            assert lw[task].dtype == np.float32


def _short(wall, step, compile_seconds=0.0):
    return {"wall_seconds": wall, "seconds_per_step": step, "compile_seconds": compile_seconds}


def test_the_measurement_fits_the_time_left(benchmark):
    jax, official = _short(60, 0.1, 30), _short(80, 0.3)
    assert benchmark.plan(jax, official, 4, False, 600) == (200, 4, 60)
    steps, shapes, peer_steps = benchmark.plan(jax, official, 4, False, 250)
    assert (steps, peer_steps) < (200, 60) and shapes >= 1
    cost = 60 + steps * 0.1 + (shapes - 1) * 30 + 80 + peer_steps * 0.3
    assert cost <= 250 - 30
    assert benchmark.plan(None, official, 4, False, 600) == (0, 4, 60)  # dss-keras failed
    assert benchmark.plan(jax, official, 4, False, 60) == (0, 0, 0)  # the short pass stands


def test_the_report_gives_the_ratios_of_each_pass(benchmark, capsys):
    results = [
        {"pass": "short", "side": "dss-keras (jax, bf16)", "examples_per_second": 300.0,
         "seconds_per_step": 0.2, "compile_seconds": 40.0, "peak_gpu_mb": 9000.0},
        {"pass": "short", "side": "official (torch, bf16)", "examples_per_second": 150.0,
         "seconds_per_step": 0.4, "peak_gpu_mb": 12000.0},
    ]
    benchmark.print_table(results)
    out = capsys.readouterr().out
    assert "short: dss-keras 2.00x the authors' examples/s, peak GPU memory 0.75x" in out


def test_the_bundle_carries_the_versions_the_authors_code_runs_with(benchmark):
    names = benchmark.carried_wheels()
    assert {"transformers==4.57.6", "datasets==5.0.1"} <= set(names)
    assert any(name.startswith("keras-hub==") for name in names)
    assert not any(name.split("==")[0] in ("jax", "jaxlib", "tensorflow", "torch")
                   for name in names)
