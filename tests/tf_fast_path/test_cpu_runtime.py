"""TensorFlow's fast CPU settings: on for `dss-keras`, the user's choice kept."""

import logging
import os
import subprocess
import sys

import pytest
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from dss_keras.tf_fast_path import cpu_runtime
from dss_keras.tf_fast_path.cpu_runtime import ONEDNN_KERNELS, POOLED_ALLOCATOR, use_fast_cpu_runtime

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def _this_process_asks_only_within_a_test(monkeypatch):
    monkeypatch.setattr(cpu_runtime, "_asked", cpu_runtime._asked)


TINY_TRAIN = ["train", "--data", "word_problems:24", "--steps", "2", "--batch-size", "4",
              "--vocabulary-size", "150", "--hidden-dim", "16", "--intermediate-dim", "32",
              "--num-layers", "1", "--num-heads", "2", "--max-input-length", "48",
              "--max-label-length", "4", "--max-rationale-length", "12"]
# Trains through the CLI in this process, then asks TensorFlow what it ran with: allocator
# statistics exist only with the BFC allocator.
TRAIN_THEN_ASK = """
import sys
from dss_keras import cli
assert cli.main(sys.argv[1:]) == 0
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port
try:
    allocator = "bfc, peak bytes %d" % tf.config.experimental.get_memory_info("CPU:0")["peak"]
except ValueError:
    allocator = "malloc"
print(allocator, "| onednn", _pywrap_util_port.IsMklEnabled())
"""


def _run_python(code, argv=(), **environment):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop(POOLED_ALLOCATOR, None)
    env.pop(ONEDNN_KERNELS, None)
    run = subprocess.run([sys.executable, "-c", code, *argv], env={**env, **environment},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


def test_dss_keras_train_runs_with_both_unless_told_not_to(tmp_path):
    argv = [*TINY_TRAIN, "--run-dir", str(tmp_path / "run")]
    allocator, onednn = _run_python(TRAIN_THEN_ASK, argv).split(" | ")
    assert allocator.startswith("bfc") and int(allocator.split()[-1]) > 1_000_000
    assert onednn == "onednn True"
    told = _run_python(TRAIN_THEN_ASK, argv, **{POOLED_ALLOCATOR: "false", ONEDNN_KERNELS: "0"})
    assert told == "malloc | onednn False"


@pytest.mark.parametrize("allocator, onednn", [("true", "0"), ("false", "0"), ("False", "1"),
                                              ("1", "true")])
def test_a_fresh_process_gets_what_the_variables_say(allocator, onednn):
    code = ("from dss_keras import use_fast_cpu_runtime as use; said = use(); "
            "import tensorflow as tf; tf.constant(1.0) + 1; "
            "from dss_keras.tf_fast_path.cpu_runtime import onednn_in_effect, pooled_allocator_in_effect; "
            "print(said == dict(onednn_kernels=onednn_in_effect(), "
            "pooled_allocator=pooled_allocator_in_effect()), sorted(said.values()))")
    said = _run_python(code, **{POOLED_ALLOCATOR: allocator, ONEDNN_KERNELS: onednn})
    onednn = onednn.lower() in ("1", "true")
    pooled = allocator.lower() in ("1", "true") or onednn  # oneDNN pools memory itself
    assert said == f"True {sorted([onednn, pooled])}"


def test_a_fresh_process_left_alone_gets_both():
    code = ("import os; from dss_keras import use_fast_cpu_runtime as use; said = use(); "
            "print(said, os.environ['TF_CPU_ALLOCATOR_USE_BFC'], os.environ['TF_ENABLE_ONEDNN_OPTS'])")
    assert _run_python(code) == ("{'onednn_kernels': True, 'pooled_allocator': True} true 1")


def test_once_tensorflow_has_read_them_it_reports_what_runs_and_warns(monkeypatch, caplog):
    monkeypatch.delenv(POOLED_ALLOCATOR, raising=False)
    monkeypatch.delenv(ONEDNN_KERNELS, raising=False)
    tf.constant(1.0) + 1.0  # the runtime, and with it the CPU allocator, exists now
    with caplog.at_level(logging.WARNING):
        in_effect = use_fast_cpu_runtime()
    assert in_effect["onednn_kernels"] == _pywrap_util_port.IsMklEnabled()
    assert POOLED_ALLOCATOR not in os.environ and ONEDNN_KERNELS not in os.environ
    if all(in_effect.values()):
        assert not caplog.text
    else:
        assert "keeps its default" in caplog.text
        caplog.clear()
        assert use_fast_cpu_runtime(warn=False) == in_effect and not caplog.text


def test_a_users_choice_read_too_late_is_not_warned_about(monkeypatch, caplog):
    tf.constant(1.0) + 1.0
    monkeypatch.setenv(POOLED_ALLOCATOR, "false")
    monkeypatch.setenv(ONEDNN_KERNELS, "0")
    with caplog.at_level(logging.WARNING):
        use_fast_cpu_runtime()
    assert not caplog.text


# Trains with the library alone (no `use_fast_cpu_runtime()`), recording what reaches glibc.
LIBRARY_ALONE = """
import os
before = dict(os.environ)
from dss_keras import testing
from dss_keras.data import make_dataset
from dss_keras.tf_fast_path import train_function
called = []
train_function._glibc_function = lambda name: (lambda *args: called.append(name) or 1)
import keras
model = testing.tiny_model()
model.compile(optimizer=keras.optimizers.AdamW(1e-3))
dataset, _ = make_dataset(testing.toy_records(8), model.preprocessor, batch_size=4)
model.fit(dataset, epochs=1, verbose=0)
changed = sorted(k for k in set(os.environ) | set(before) if os.environ.get(k) != before.get(k))
print(changed, called)
"""


def test_the_library_alone_changes_no_process_setting():
    """No environment variable, no glibc option: the user's process stays the user's."""
    said = _run_python(LIBRARY_ALONE, **{POOLED_ALLOCATOR: "true"})
    assert said == "[] []"
