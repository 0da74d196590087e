"""TensorFlow's pooled CPU allocator: on for `dss-keras`, the user's choice kept."""

import logging
import os
import subprocess
import sys

import pytest
import tensorflow as tf

from dss_keras.cpu_allocator import ENVIRONMENT_VARIABLE, use_pooled_cpu_allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TRAIN = ["train", "--data", "word_problems:24", "--steps", "2", "--batch-size", "4",
              "--vocabulary-size", "150", "--hidden-dim", "16", "--intermediate-dim", "32",
              "--num-layers", "1", "--num-heads", "2", "--max-input-length", "48",
              "--max-label-length", "4", "--max-rationale-length", "12"]
# Trains through the CLI in this process, then asks TensorFlow for the CPU allocator's
# statistics, which only the BFC allocator keeps.
TRAIN_THEN_ASK_ALLOCATOR = """
import sys
from dss_keras import cli
assert cli.main(sys.argv[1:]) == 0
import tensorflow as tf
try:
    print("peak bytes", tf.config.experimental.get_memory_info("CPU:0")["peak"])
except ValueError:
    print("malloc")
"""


def _train_and_ask(tmp_path, **environment):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", **environment)
    if not environment:
        env.pop(ENVIRONMENT_VARIABLE, None)
    run = subprocess.run(
        [sys.executable, "-c", TRAIN_THEN_ASK_ALLOCATOR, *TINY_TRAIN,
         "--run-dir", str(tmp_path / "run")],
        env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


def test_dss_keras_train_runs_on_the_pooled_allocator_unless_told_not_to(tmp_path):
    pooled = _train_and_ask(tmp_path)
    assert pooled.startswith("peak bytes") and int(pooled.split()[-1]) > 1_000_000
    assert _train_and_ask(tmp_path, **{ENVIRONMENT_VARIABLE: "false"}) == "malloc"


def test_the_users_setting_is_kept(monkeypatch):
    monkeypatch.setenv(ENVIRONMENT_VARIABLE, "false")
    assert use_pooled_cpu_allocator() is False
    assert os.environ[ENVIRONMENT_VARIABLE] == "false"


def test_after_tensorflow_started_it_warns_that_it_is_too_late(monkeypatch, caplog):
    monkeypatch.delenv(ENVIRONMENT_VARIABLE, raising=False)
    tf.constant(1.0) + 1.0  # the runtime, and with it the CPU allocator, exists now
    with caplog.at_level(logging.WARNING):
        assert use_pooled_cpu_allocator() is False
    assert "CPU allocator is fixed" in caplog.text
    assert ENVIRONMENT_VARIABLE not in os.environ
    caplog.clear()
    assert use_pooled_cpu_allocator(warn=False) is False and not caplog.text


@pytest.mark.parametrize("value, wanted", [("true", True), ("1", True), ("False", False)])
def test_a_fresh_process_gets_what_the_variable_says(value, wanted):
    code = ("from dss_keras.cpu_allocator import use_pooled_cpu_allocator; "
            "print(use_pooled_cpu_allocator())")
    env = dict(os.environ, PYTHONPATH=REPO, **{ENVIRONMENT_VARIABLE: value})
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.strip() == str(wanted), run.stderr[-2000:]
