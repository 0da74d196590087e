"""When a training step's tensors peak, and what is alive at that moment.

Trains the shape and data of `train_throughput.py` (t5-v1_1-small shape, CQA,
batch 8; `--variant`, default `fast`) for a few steps, records one step with
TensorFlow's profiler and replays its allocator's events: the bytes in use
along the step, the moment they peak, and the tensors allocated during the
step that are still alive then, summed by the op that made them. Memory held
before the step (weights, optimizer moments) is counted in the bytes in use
but not listed. TensorFlow's pooled CPU allocator reports these events, and
the script turns it on as `dss-keras` does (`dss_keras.tf_fast_path.cpu_runtime`).

    python benchmarks/step_allocations.py
    python benchmarks/step_allocations.py --step 5 --top 20 --bf16

Prints the timeline (bytes in use at evenly spaced events, with the op
allocating there), the peak and the ops holding most of it.
"""

from __future__ import annotations

import argparse
import collections
import glob
import sys
import tempfile
from pathlib import Path

from dss_keras.tf_fast_path.cpu_runtime import use_fast_cpu_runtime  # light: imports no TensorFlow
from dss_keras.quiet import quiet_tensorflow

use_fast_cpu_runtime()
quiet_tensorflow()
HERE = Path(__file__).resolve().parent


def allocator_events(xplane_path: str) -> list[dict]:
    """The allocator's `MemoryAllocation`/`MemoryDeallocation` events, in time order.

    Each event is a dict of its profiler stats (`addr`, `allocation_bytes`,
    `bytes_allocated`: the allocator's bytes in use after it, `tf_op`, ...)
    plus `kind` ("alloc" or "free") and `time_ps`.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    space.ParseFromString(Path(xplane_path).read_bytes())
    kinds = {"MemoryAllocation": "alloc", "MemoryDeallocation": "free"}
    events = []
    for plane in space.planes:
        stat_names = {key: meta.name for key, meta in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                kind = kinds.get(plane.event_metadata[event.metadata_id].name)
                if kind is None:
                    continue
                found = {"kind": kind, "time_ps": line.timestamp_ns * 1000 + event.offset_ps}
                for stat in event.stats:
                    value = stat.WhichOneof("value")
                    found[stat_names.get(stat.metadata_id, stat.metadata_id)] = (
                        plane.stat_metadata[stat.ref_value].name if value == "ref_value"
                        else getattr(stat, value))
                events.append(found)
    return sorted(events, key=lambda e: e["time_ps"])


def live_at_peak(events: list[dict]) -> tuple[int, int, dict[str, tuple[int, int]]]:
    """`(bytes in use at the peak, the event's index, {op: (bytes, tensors)})`.

    The ops are those whose allocations made during the events are still
    alive at the peak; allocations made before the first event do not show.

    >>> def event(kind, addr, size, in_use, op=None):
    ...     return {"kind": kind, "addr": addr, "allocation_bytes": size,
    ...             "bytes_allocated": in_use, "tf_op": op}
    >>> events = [event("alloc", 1, 4, 14, "a"), event("alloc", 2, 6, 20, "b"),
    ...           event("free", 1, 4, 16), event("alloc", 3, 2, 18, "b")]
    >>> live_at_peak(events)
    (20, 1, {'b': (6, 1), 'a': (4, 1)})
    """
    live: dict = {}
    peak, peak_index, peak_live = -1, -1, {}
    for index, event in enumerate(events):
        if event["kind"] == "alloc":
            live[event["addr"]] = (int(event["allocation_bytes"]), event.get("tf_op") or "?")
        else:
            live.pop(event["addr"], None)
        in_use = int(event["bytes_allocated"])
        if in_use > peak:
            peak, peak_index, peak_live = in_use, index, dict(live)
    by_op: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
    for size, op in peak_live.values():
        by_op[op][0] += size
        by_op[op][1] += 1
    ranked = sorted(by_op.items(), key=lambda item: -item[1][0])
    return peak, peak_index, {op: (size, count) for op, (size, count) in ranked}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default=None, help="as in train_throughput.py")
    p.add_argument("--variant", default="fast", help="a variant of train_throughput.py")
    p.add_argument("--step", type=int, default=5, help="the step recorded (0-based)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=12, help="ops listed at the peak")
    p.add_argument("--rows", type=int, default=24, help="rows of the timeline")
    p.add_argument("--bf16", action="store_true", help="Keras' mixed_bfloat16 policy")
    args = p.parse_args(argv)

    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    sys.path.insert(0, str(HERE))
    import train_throughput as bench

    records, proto = bench.load_inputs(args.data_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model, dataset = bench.build_variant(proto, records, bench.VARIANTS[args.variant],
                                             args.step + 1, batch_size=8, bf16=args.bf16)
        logdir = Path(tmp) / "profile"

        class RecordOneStep(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                if batch == args.step:
                    tf.profiler.experimental.start(
                        str(logdir), tf.profiler.experimental.ProfilerOptions(host_tracer_level=3))

            def on_train_batch_end(self, batch, logs=None):
                if batch == args.step:
                    tf.profiler.experimental.stop()

        model.fit(dataset, steps_per_epoch=args.step + 1, epochs=1, verbose=0,
                  callbacks=[RecordOneStep()])
        (xplane,) = glob.glob(str(logdir / "**" / "*.xplane.pb"), recursive=True)
        events = allocator_events(xplane)
    if not events:
        print("no allocator events recorded (is the pooled CPU allocator on?)")
        return 1
    peak, peak_index, by_op = live_at_peak(events)
    mb = 2**20
    print(f"step {args.step} ({args.variant}{', bf16' if args.bf16 else ''}): "
          f"{len(events)} allocator events; bytes in use at the start "
          f"{int(events[0]['bytes_allocated']) / mb:,.0f} MB, at the end "
          f"{int(events[-1]['bytes_allocated']) / mb:,.0f} MB")
    print("\nevent    in use   allocating op")
    every = max(1, len(events) // args.rows)
    for index in sorted(set(range(0, len(events), every)) | {peak_index}):
        event = events[index]
        mark = "  <- peak" if index == peak_index else ""
        op = event.get("tf_op") if event["kind"] == "alloc" else "(free)"
        print(f"{index:6d} {int(event['bytes_allocated']) / mb:7,.0f} MB  {op}{mark}")
    alive = sum(size for size, _ in by_op.values())
    print(f"\npeak {peak / mb:,.0f} MB at event {peak_index}; allocated during the step and "
          f"alive then: {alive / mb:,.0f} MB in {sum(n for _, n in by_op.values())} tensors")
    for op, (size, count) in list(by_op.items())[:args.top]:
        print(f"  {size / mb:7.1f} MB {count:4d}  {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
