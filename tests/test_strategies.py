"""Training under tf.distribute strategies: 2 replicas and 2 workers against one device; crash resume.

Each test runs TensorFlow in subprocesses: logical CPU devices and the
multi-worker cluster must be set up before TensorFlow initialises.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dss_keras.backup import Backup

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = dict(
    steps=4, eval_every=2, batch_size=8, vocabulary_size=120, hidden_dim=16,
    intermediate_dim=32, num_layers=1, num_heads=2, max_input_length=48,
    max_label_length=4, max_rationale_length=16, learning_rate=3e-3,
    lr_schedule="linear", clip_global_norm=0.05, adam_epsilon=1e-8, seed=3,
)
"""A few steps of a tiny model, with the authors' optimizer; the clip norm is low enough to clip."""

FIT_SCRIPT = textwrap.dedent("""
    import json, os, sys
    import numpy as np
    import tensorflow as tf
    if sys.argv[1] == "two_devices":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from dss_keras import testing, training
    from dss_keras.config import TrainConfig
    from dss_keras.data import Splits

    def run(strategy, out):
        config = TrainConfig(**{tiny!r}, strategy=strategy)
        result = training.fit(config, Splits(testing.toy_records(32), [], []), verbose=0,
                              backup_dir=os.path.join(sys.argv[2], "backup"),
                              log_dir=os.path.join(sys.argv[2], "logs"))
        np.savez(out, *result.model.get_weights())
        return {{"loss": result.history["loss"],
                "label_loss": result.history["label_loss"],
                "replicas": result.model.distribute_strategy.num_replicas_in_sync,
                "iterations": int(result.model.optimizer.iterations.numpy())}}

    results = {{}}
    if sys.argv[1] == "two_devices":
        results["default"] = run("default", os.path.join(sys.argv[2], "default.npz"))
        results["mirrored"] = run("mirrored", os.path.join(sys.argv[2], "mirrored.npz"))
        # Clipping sees the sum of the replicas' gradients, not each share.
        from dss_keras import optimizers, strategies
        strategy = strategies.make_strategy("mirrored")
        with strategy.scope():
            optimizer = optimizers.AdamW(global_clipnorm=1.0)
        shares = strategy.experimental_distribute_values_from_function(
            lambda context: tf.constant([[3.0, 0.0], [0.0, 4.0]])[context.replica_id_in_sync_group])
        clipped = strategy.run(lambda g: optimizer._clip_gradients([g])[0], args=(shares,))
        results["clipped_sum"] = strategy.reduce("SUM", clipped, axis=None).numpy().tolist()
    else:
        results["worker"] = run(sys.argv[1], os.path.join(sys.argv[2], sys.argv[3] + ".npz"))
    print("RESULT " + json.dumps(results), flush=True)
""").format(tiny=TINY)


def subprocess_env(**extra) -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow",
                CUDA_VISIBLE_DEVICES="",
                PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
                **extra)


def result_of(output: str) -> dict:
    lines = [line for line in output.splitlines() if line.startswith("RESULT ")]
    assert lines, output[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


def load_weights(path) -> list:
    with np.load(path) as weights:
        return [weights[f"arr_{i}"] for i in range(len(weights.files))]


def assert_same_weights(a, b, atol=1e-5):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(argv, log_path, **env):
    log = open(log_path, "w+")
    process = subprocess.Popen([sys.executable, "-W", "ignore", *argv], cwd=REPO,
                               env=subprocess_env(**env), stdout=log, stderr=subprocess.STDOUT)
    return process, log


def finish(processes, logs, timeout: float) -> dict:
    """Waits for every process (killing all past `timeout`); returns their outputs."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes.values():
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)
    outputs = {}
    for name, log in logs.items():
        log.seek(0)
        outputs[name] = log.read()
        log.close()
    for name, process in processes.items():
        assert process.returncode == 0, f"{name} failed:\n{outputs[name][-3000:]}"
    return outputs


@pytest.mark.slow
def test_mirrored_two_replicas_train_like_one_device(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    processes, logs = {}, {}
    processes["run"], logs["run"] = start([str(script), "two_devices", str(tmp_path)],
                                          tmp_path / "run.log")
    result = result_of(finish(processes, logs, timeout=300)["run"])
    assert result["default"]["replicas"] == 1 and result["mirrored"]["replicas"] == 2
    assert result["mirrored"]["iterations"] == result["default"]["iterations"] == 4
    for name in ("loss", "label_loss"):
        np.testing.assert_allclose(result["mirrored"][name], result["default"][name],
                                   rtol=1e-5, atol=1e-5)
    single = load_weights(tmp_path / "default.npz")
    assert_same_weights(load_weights(tmp_path / "mirrored.npz"), single)
    np.testing.assert_allclose(result["clipped_sum"], [0.6, 0.8], rtol=1e-6)
    # Training moved the weights (the equality is not that of untouched ones).
    assert not (tmp_path / "backup").exists()  # removed by the chief at the end


@pytest.mark.slow
def test_multi_worker_two_processes_train_like_one_process(tmp_path):
    script = tmp_path / "fit.py"
    script.write_text(FIT_SCRIPT)
    shared = tmp_path / "shared"
    shared.mkdir()
    workers = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    processes, logs = {}, {}
    try:
        for index in range(2):
            tf_config = json.dumps({"cluster": {"worker": workers},
                                    "task": {"type": "worker", "index": index}})
            processes[f"worker{index}"], logs[f"worker{index}"] = start(
                [str(script), "multi_worker", str(shared), f"worker{index}"],
                tmp_path / f"worker{index}.log", TF_CONFIG=tf_config)
        single_dir = tmp_path / "single"
        single_dir.mkdir()
        processes["single"], logs["single"] = start(
            [str(script), "default", str(single_dir), "single"], tmp_path / "single.log")
    finally:
        outputs = finish(processes, logs, timeout=300)
    results = {name: result_of(output)["worker"] for name, output in outputs.items()}
    assert results["worker0"]["replicas"] == results["worker1"]["replicas"] == 2
    np.testing.assert_allclose(results["worker0"]["loss"], results["single"]["loss"],
                               rtol=1e-5, atol=1e-5)
    worker0, worker1 = (load_weights(shared / f"worker{i}.npz") for i in range(2))
    assert_same_weights(worker0, worker1, atol=0)
    assert_same_weights(worker0, load_weights(single_dir / "single.npz"))
    # Only the chief (worker 0) writes logs; the backup is gone once training finished.
    assert sorted(os.listdir(shared)) == ["logs", "worker0.npz", "worker1.npz"]


def _train_command(run_dir) -> list:
    flags = {**TINY, "steps": 12, "eval_every": 2, "validation_fraction": 0.125}
    return ["-m", "dss_keras.cli", "train", "--data", "word_problems:64", "--run-dir",
            str(run_dir), *[f"--{k.replace('_', '-')}={v}" for k, v in flags.items()]]


@pytest.mark.slow
def test_sigkill_mid_run_then_the_same_command_resumes_to_the_same_weights(tmp_path):
    import keras

    import dss_keras.backbones  # noqa: F401  (registers the classes)
    import dss_keras.model  # noqa: F401

    run_dir = tmp_path / "killed"
    processes, logs = {}, {}
    processes["killed"], logs["killed"] = start(_train_command(run_dir), tmp_path / "killed.log")
    processes["whole"], logs["whole"] = start(_train_command(tmp_path / "whole"),
                                              tmp_path / "whole.log")
    try:
        deadline = time.monotonic() + 240
        backup = Backup(str(run_dir / "backup"))
        while not backup.generations() and processes["killed"].poll() is None:
            assert time.monotonic() < deadline, "no backup was written"
            time.sleep(0.02)
        processes["killed"].send_signal(signal.SIGKILL)
        processes["killed"].wait(timeout=30)
        assert processes["killed"].returncode == -signal.SIGKILL
        assert not (run_dir / "metrics.json").exists()
        newest = backup.generations()[0]
        epochs_done = json.loads((Path(newest) / "state.json").read_text())["epoch"]
        assert 1 <= epochs_done < 6
    finally:
        if processes["killed"].poll() is None:
            processes["killed"].kill()
            processes["killed"].wait(timeout=30)
        logs.pop("killed").close()
        processes.pop("killed")
        processes["resumed"], logs["resumed"] = start(_train_command(run_dir),
                                                      tmp_path / "resumed.log")
        finish(processes, logs, timeout=300)
    resumed = keras.models.load_model(run_dir / "model.keras")
    whole = keras.models.load_model(tmp_path / "whole" / "model.keras")
    assert int(resumed.optimizer.iterations) == int(whole.optimizer.iterations) == 12
    assert_same_weights(resumed.get_weights(), whole.get_weights(), atol=1e-6)
    history = json.loads((run_dir / "metrics.json").read_text())["history"]["loss"]
    whole_history = json.loads((tmp_path / "whole" / "metrics.json").read_text())["history"]
    assert len(history) == 6  # every period once, those before the kill too
    np.testing.assert_allclose(history, whole_history["loss"], rtol=1e-5)
