"""The flat train function: the same training as Keras' own, traced once, heap handed back."""

import functools
import subprocess
import sys

import keras
import numpy as np
import pytest

from dss_keras import testing
from dss_keras.tf_fast_path import train_function
from dss_keras.data import make_dataset


def _compiled_pair():
    """Two tiny models with the same weights; the second trains through Keras' function."""
    flat, nested = testing.tiny_model(), testing.tiny_model()
    nested.seq2seq_lm.set_weights(flat.seq2seq_lm.get_weights())
    for model in (flat, nested):
        model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    nested.make_train_function = functools.partial(keras.Model.make_train_function, nested)
    return flat, nested


def _dataset(model, num_examples=24, **options):
    dataset, _ = make_dataset(testing.toy_records(num_examples), model.preprocessor,
                              batch_size=8, shuffle=False, **options)
    return dataset


@pytest.mark.slow
def test_trains_exactly_as_keras_nested_functions():
    flat, nested = _compiled_pair()
    flat_history = flat.fit(_dataset(flat), epochs=2, verbose=0).history
    nested_history = nested.fit(_dataset(nested), epochs=2, verbose=0).history
    assert flat.train_function is not nested.train_function
    assert flat_history["loss"] == pytest.approx(nested_history["loss"], rel=1e-6)
    for got, want in zip(flat.seq2seq_lm.get_weights(), nested.seq2seq_lm.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_epochs_end_with_the_data_as_in_keras_and_the_step_is_traced_once(monkeypatch):
    flat, nested = _compiled_pair()
    traces = []
    original = type(flat).train_step
    monkeypatch.setattr(type(flat), "train_step",
                        lambda self, data: traces.append(self) or original(self, data))
    # 20 examples in length buckets: batches of several lengths and sizes.
    dataset = _dataset(flat, 20)
    assert len({tuple(x["label"]["encoder_token_ids"].shape) for x, _, _ in dataset}) > 1
    history = flat.fit(dataset, epochs=2, verbose=0)
    nested.fit(_dataset(nested, 20), epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2
    assert int(flat.optimizer.iterations) == int(nested.optimizer.iterations) >= 6
    assert traces.count(flat) == 1


@pytest.mark.slow
def test_train_on_batch_and_several_steps_per_execution():
    model = testing.tiny_model()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    x, y, w = next(iter(_dataset(model)))
    logs = model.train_on_batch(x, y, w, return_dict=True)
    assert np.isfinite(logs["loss"]) and int(model.optimizer.iterations) == 1
    # Keras' own (while-loop) function runs several steps per call.
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), steps_per_execution=3)
    model.fit(_dataset(model, bucket_boundaries=[]), epochs=1, verbose=0)  # 3 batches
    assert int(model.optimizer.iterations) == 3


@pytest.mark.slow
@pytest.mark.parametrize("asked, pooled, release_memory, trims", [
    (True, True, None, 1),  # asked for, with pooled tensors: once, after the first step
    (True, False, None, 0),  # asked for, with malloc'd tensors: never
    (False, True, None, 0),  # not asked for: glibc's settings are the user's
    (False, False, True, 1),
    (True, True, False, 0),
])
def test_the_heap_is_handed_back_once_after_the_first_step(monkeypatch, asked, pooled,
                                                           release_memory, trims):
    calls, maps = [], []
    monkeypatch.setattr(train_function, "fast_cpu_runtime_asked", lambda: asked)
    monkeypatch.setattr(train_function, "release_free_memory", lambda: calls.append(1))
    monkeypatch.setattr(train_function, "map_large_allocations",
                        lambda threshold=None: maps.append(threshold))
    monkeypatch.setattr(train_function, "pooled_allocator_in_effect", lambda: pooled)
    model = testing.tiny_model()
    model.compile(optimizer=keras.optimizers.AdamW(1e-3))
    if release_memory is not None:
        model.train_function = train_function.flat_train_function(model, release_memory)
    model.fit(_dataset(model), epochs=2, verbose=0)
    assert int(model.optimizer.iterations) > 2 and len(calls) == trims
    # Large allocations mapped on their own during the first step, and not after it.
    assert maps == [None, train_function.STEADY_LARGE_ALLOCATION] * trims


# Run in a fresh Python: in a long-lived one, malloc may hand out pages that are
# already resident, and the figures say nothing.
PROBE_SETUP = """
import ctypes
from dss_keras.tf_fast_path.train_function import map_large_allocations, release_free_memory
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
"""
HEAP_PROBE = PROBE_SETUP + """
blocks = []
for _ in range(5120):  # 320 MB in 64 KiB blocks: below the mmap threshold, in the heap
    blocks.append(libc.malloc(64 * 1024))
    ctypes.memset(blocks[-1], 1, 64 * 1024)
# Every other block freed, the others kept: holes inside the heap, which free() cannot
# hand back at its top (small pins between the blocks could come from elsewhere).
for block in blocks[::2]:
    libc.free(block)
before = rss()
print(release_free_memory(), before - rss())
"""


MAPPING_PROBE = PROBE_SETUP + """
# A freed mapped block raises glibc's threshold to its size: blocks of 4 MiB then
# come from the heap, and freed ones below a live one stay resident.
libc.free(libc.malloc(8 * 2**20))
mapped = map_large_allocations() if {fixed} else True
blocks = [libc.malloc(4 * 2**20) for _ in range(40)]
for block in blocks:
    ctypes.memset(block, 1, 4 * 2**20)
pin = libc.malloc(200 * 1024)  # from the heap's top, after the blocks: keeps it in use
ctypes.memset(pin, 1, 200 * 1024)
before = rss()
for block in blocks:
    libc.free(block)
print(mapped, before - rss())
"""


@pytest.mark.parametrize("fixed", [True, False])
def test_large_allocations_go_back_to_the_system_when_freed(fixed):
    if train_function._glibc_function("mallopt") is None:
        pytest.skip("not glibc")
    done = subprocess.run([sys.executable, "-c", MAPPING_PROBE.replace("{fixed}", str(fixed))],
                          capture_output=True, text=True, check=True)
    mapped, freed_mb = done.stdout.split()
    assert mapped == "True"
    if fixed:
        assert float(freed_mb) > 150  # 160 MB freed, all of it handed back
    else:
        assert float(freed_mb) < 10  # glibc's own threshold kept them in its heap


def test_release_free_memory_returns_freed_heap_pages():
    if train_function._glibc_function("malloc_trim") is None:
        pytest.skip("not glibc: nothing to hand back")
    done = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True,
                          check=True)
    released, freed_mb = done.stdout.split()
    assert released == "True" and float(freed_mb) > 100
