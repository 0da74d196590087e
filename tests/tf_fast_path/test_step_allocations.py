"""The allocation timeline benchmark: replaying the allocator's events to the peak."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO, "benchmarks", "step_allocations.py")


@pytest.fixture(scope="module")
def step_allocations():
    spec = importlib.util.spec_from_file_location("step_allocations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _event(kind, addr, size, in_use, op=None):
    return {"kind": kind, "addr": addr, "allocation_bytes": size, "bytes_allocated": in_use,
            "tf_op": op}


def test_the_peak_lists_what_is_alive_then_by_op(step_allocations):
    events = [
        _event("free", 99, 50, 950),           # held before the record: not listed
        _event("alloc", 1, 100, 1050, "a"),
        _event("alloc", 2, 300, 1350, "b"),
        _event("alloc", 3, 200, 1550, "b"),   # the peak: a once, b twice
        _event("free", 2, 300, 1250),
        _event("alloc", 4, 250, 1500, "c"),   # below the peak
    ]
    peak, index, by_op = step_allocations.live_at_peak(events)
    assert (peak, index) == (1550, 3)
    assert list(by_op.items()) == [("b", (500, 2)), ("a", (100, 1))]


_PROFILED = """
import json, sys, tempfile, glob
sys.path.insert(0, {benchmarks!r})
import step_allocations
import tensorflow as tf

@tf.function
def step(x):
    big = tf.tile(x, [1024, 1024])      # 4 MiB of float32
    return tf.reduce_sum(big * 2.0)

x = tf.ones([1, 1])
step(x)
with tempfile.TemporaryDirectory() as tmp:
    tf.profiler.experimental.start(
        tmp, tf.profiler.experimental.ProfilerOptions(host_tracer_level=3))
    step(x)
    tf.profiler.experimental.stop()
    (xplane,) = glob.glob(tmp + "/**/*.xplane.pb", recursive=True)
    events = step_allocations.allocator_events(xplane)
peak, index, by_op = step_allocations.live_at_peak(events)
print(json.dumps({{"events": len(events), "by_op": by_op}}))
"""


def test_a_profiled_step_yields_its_allocations():
    # A fresh process: the pooled allocator must be chosen before TensorFlow starts.
    code = _PROFILED.format(benchmarks=os.path.join(REPO, "benchmarks"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["events"] > 0
    big = {op: size for op, (size, _) in report["by_op"].items() if size >= 4 * 2**20}
    assert any("Tile" in op or "mul" in op for op in big), report["by_op"]
