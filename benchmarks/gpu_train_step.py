"""Training throughput on one GPU: dss-keras on JAX against the authors' code on PyTorch.

Both sides train the T5-v1.1-base shape (d_model 768, 12 encoder and 12
decoder layers, 12 heads, d_kv 64, d_ff 2048 gated tanh-GELU, vocabulary
32128, random init, dropout 0.1) on both tasks of CQA (the training records
with PaLM rationales), batch 64, inputs and targets cut at 256 tokens, in
bfloat16 mixed precision, with the authors' optimizer (AdamW, epsilon 1e-8,
linear decay from 5e-5, clipping at global norm 1.0). One SentencePiece model
(`train_throughput.load_inputs`, 8,000 pieces) tokenizes both sides' text.

- `official`: the authors' `run.py` through `run_official.sh` (a copy of the
  folder given to `--official`), `STANDIN_SHAPE=base`, their own `--bf16`
  (added by `official_hooks/`), `VENV=none` with this machine's PyTorch; its
  `peak_gpu_mb` is `torch.cuda.max_memory_allocated()`.
- `dss-keras (jax)`: `DistillStepByStep` built by `dss_keras.training.
  build_model` (Keras' own `train_step` on JAX, XLA), `mixed_bfloat16`, fed
  the batches `make_dataset(..., bounded_shapes=True)` made here (what
  `dss-keras train` feeds on JAX); one compilation per batch shape. Its peak
  GPU memory is `jax.devices()[0].memory_stats()["peak_bytes_in_use"]` with
  `XLA_PYTHON_CLIENT_PREALLOCATE=false` (XLA then allocates what it uses,
  not 75% of the GPU up front).

The GPU machine has JAX and PyTorch for CUDA but no TensorFlow and no network,
so everything is prepared here, on a machine with TensorFlow and pip's index,
into an ignored folder (under 64 MiB):

    python benchmarks/gpu_train_step.py --prepare --data-dir PATH --official PATH
        # benchmarks/.gpu_bundle/: wheels the GPU machine lacks (keras, keras-hub and
        # their small needs; transformers 4.57.6, huggingface_hub 0.36.2, tokenizers
        # 0.22.2, datasets 5.0.1 and theirs), the token batches, the CQA and SVAMP
        # release files their code reads, and their code

and run there, from the repository root, as one command:

    python3 benchmarks/gpu_train_step.py --bundle benchmarks/.gpu_bundle --out "$OUT"

It installs the wheels into a temporary folder, then runs a short pass that
proves every piece in a minute or two (each side a few steps, dss-keras on one
batch shape), writing `short.json`, then the measurement (`long.json`), sized
to end within `--budget` seconds (7.5 minutes) from its start. It prints a
table of examples/s, seconds per step, compile (or first-step) time and peak
GPU memory, with the ratios dss-keras / official.

    python benchmarks/gpu_train_step.py --dry-run --data-dir PATH --official PATH \
        [--torch-python PYTHON]

checks all of it here on the CPU: a bundle for this machine's Python
(`benchmarks/.gpu_bundle_dry/`), dss-keras at a tiny shape with TensorFlow made
unimportable (as on the GPU machine), and the authors' side at the
t5-v1_1-small stand-in, batch 4, when `--torch-python` (default: this Python)
has torch; else it says that it skips that side.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUNDLE = HERE / ".gpu_bundle"
DRY_BUNDLE = HERE / ".gpu_bundle_dry"
CPU_BUNDLE = HERE / ".gpu_bundle_cpu"
LIMIT_BYTES = 64 * 2**20  # what one call to the GPU machine carries, the working tree included
MAX_LENGTH = 256
BASE_SHAPE = dict(num_layers=12, num_heads=12, hidden_dim=768, intermediate_dim=2048,
                  key_value_dim=64, dropout=0.1)
SMALL_SHAPE = dict(num_layers=8, num_heads=6, hidden_dim=512, intermediate_dim=1024,
                   key_value_dim=64, dropout=0.1)  # t5-v1_1-small, train_throughput.py's
TINY_SHAPE = dict(num_layers=2, num_heads=4, hidden_dim=64, intermediate_dim=128,
                  key_value_dim=16, dropout=0.1)
SHAPES = {"base": BASE_SHAPE, "small": SMALL_SHAPE, "tiny": TINY_SHAPE}
VOCABULARY = 32128  # t5-v1_1's embedding rows
# The GPU machine's image (see the repository's notes on it) has numpy, absl-py, rich, h5py,
# ml-dtypes, packaging, regex, sentencepiece, pandas, pyarrow, accelerate, xxhash, fsspec,
# requests, pyyaml, safetensors, hf-xet, tqdm and filelock; these it lacks (or has in
# versions the authors' code cannot use: transformers 5, huggingface_hub 1.x, tokenizers 0.23).
KERAS_WHEELS = ("keras", "keras-hub", "namex", "optree")  # KerasHub runs without kagglehub
PEER_WHEELS = ("transformers==4.57.6", "huggingface_hub==0.36.2", "tokenizers==0.22.2",
               "datasets==5.0.1", "dill==0.4.1", "multiprocess==0.70.19",
               "fsspec==2026.6.0")
# What the authors' side imports (and what those import), by module and pip name: the GPU
# machine has them all; the dry run installs those that the local torch Python lacks.
PEER_MODULES = {"accelerate": "accelerate==1.15.0", "pandas": "pandas", "pyarrow": "pyarrow",
                "xxhash": "xxhash", "sentencepiece": "sentencepiece", "yaml": "pyyaml",
                "requests": "requests", "urllib3": "urllib3", "certifi": "certifi",
                "charset_normalizer": "charset-normalizer", "idna": "idna",
                "safetensors": "safetensors", "httpx": "httpx", "httpcore": "httpcore",
                "h11": "h11", "anyio": "anyio", "sniffio": "sniffio", "filelock": "filelock",
                "tqdm": "tqdm", "regex": "regex", "dateutil": "python-dateutil", "six": "six",
                "tzdata": "tzdata", "psutil": "psutil", "hf_xet": "hf-xet",
                "typing_extensions": "typing-extensions"}
NO_TENSORFLOW = (
    "import sys\n"
    "class _NoTensorFlow:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('tensorflow', 'tensorflow_text', 'tensorflow_datasets'):\n"
    "            raise ImportError(f'no TensorFlow on the GPU machine: {name}')\n"
    "sys.meta_path.insert(0, _NoTensorFlow())\n")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    what = p.add_mutually_exclusive_group()
    what.add_argument("--prepare", action="store_true",
                      help="build the bundle for the GPU machine (here: TensorFlow, pip)")
    what.add_argument("--dry-run", action="store_true",
                      help="prepare a tiny bundle for this machine and run it on the CPU")
    what.add_argument("--cpu-step-time", action="store_true",
                      help="dss-keras on JAX beside its TensorFlow fast path on this CPU")
    p.add_argument("--data-dir", default=os.environ.get("DSS_DATA_DIR"),
                   help="the authors' data release (cqa/, svamp/)")
    p.add_argument("--official", metavar="DIR",
                   help="the authors' code with run_official.sh (copied into the bundle)")
    p.add_argument("--bundle", type=Path, help="the bundle to run (default: the one made here)")
    p.add_argument("--out", type=Path, default=os.environ.get("OUT"),
                   help="where the results go (default: $OUT, else <bundle>/results)")
    p.add_argument("--torch-python", default=sys.executable,
                   help="the Python with torch (and CUDA) that runs the authors' side")
    p.add_argument("--batches", type=int, default=40, help="token batches carried")
    p.add_argument("--sides", default="jax,official",
                   help="the sides to run: jax, official, or both (comma-separated)")
    p.add_argument("--budget", type=float, default=450.0,
                   help="seconds from the start that the run must end within")
    p.add_argument("--python-version", default="3.12",
                   help="the GPU machine's Python, for its wheels")
    # Internal: one dss-keras measurement, in its own process.
    p.add_argument("--side", choices=("jax",), help=argparse.SUPPRESS)
    p.add_argument("--shapes", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, default=20,
                   help="timed steps of --cpu-step-time (and, inside, of one measurement)")
    p.add_argument("--json-out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


# --- here: the bundle -------------------------------------------------------------------


def prepare(args, bundle: Path, *, shape: str, batch_size: int, dtype: str = "mixed_bfloat16",
            python_version: str | None = None, peer_python: str | None = None) -> dict:
    """Writes the bundle: token batches and, with `python_version`, what the run needs there.

    That is the CQA and SVAMP release files their code reads, their code, and
    the wheels (for CPython `python_version`); with `peer_python` (the dry
    run) also wheels of what that torch Python lacks, in `local_wheels/`,
    which never travel.
    """
    if not args.data_dir:
        raise SystemExit("Name the authors' data release: --data-dir PATH (or DSS_DATA_DIR). "
                         "Received: data_dir=None")
    carried = python_version is not None
    official = Path(args.official or "").resolve()
    if carried and not (official / "run_official.sh").exists():
        raise SystemExit("Name the authors' code (the folder with run_official.sh): --official "
                         f"PATH. Received: official={args.official!r}")
    shutil.rmtree(bundle, ignore_errors=True)
    (bundle / "data").mkdir(parents=True)
    sys.path.insert(0, str(HERE))
    from train_throughput import load_inputs

    records, spm = load_inputs(args.data_dir)
    (bundle / "data" / "spm.model").write_bytes(spm)
    shapes = save_batches(records, spm, bundle / "data" / "batches.npz", args.batches,
                          batch_size)
    manifest = {"shape": shape, "dtype": dtype, "batch_size": batch_size,
                "batches": args.batches, "batch_shapes": shapes, "records": len(records),
                "max_length": MAX_LENGTH, "python_version": python_version, "wheels": []}
    if carried:
        with tarfile.open(bundle / "data" / "release.tar.xz", "w:xz") as tar:
            for name in ("cqa", "svamp"):  # their stand-in's vocabulary script reads both
                tar.add(Path(args.data_dir) / name, arcname=name)
        shutil.copytree(official, bundle / "peer", ignore=shutil.ignore_patterns("__pycache__"))
        wheels = download_wheels(bundle / "wheels", python_version, carried_wheels())
        manifest["wheels"] = sorted(p.name for p in wheels)
        if peer_python:
            download_wheels(bundle / "local_wheels", python_version,
                            missing_modules(peer_python))
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=1))
    size = sum(p.stat().st_size for p in bundle.rglob("*")
               if p.is_file() and "local_wheels" not in p.parts)
    print(f"bundle {bundle}: {size / 2**20:.1f} MiB ({len(manifest['wheels'])} wheels, "
          f"{args.batches} batches of {batch_size} in {len(shapes)} shapes)", flush=True)
    if size > LIMIT_BYTES - 8 * 2**20:  # the repository's tracked files travel too
        raise SystemExit(f"The bundle is too large to carry: {size / 2**20:.1f} MiB of "
                         f"{LIMIT_BYTES / 2**20:.0f} MiB with the repository. Received: "
                         f"batches={args.batches}")
    return manifest


def save_batches(records, spm: bytes, path: Path, count: int, batch_size: int) -> dict:
    """`count` batches of `make_dataset(bounded_shapes=True)`, as `dss-keras train` on JAX gets.

    Token ids fit 16 bits (32,128 rows); masks and weights 8. Returns each
    batch shape's count (its key: both tasks' encoder and target lengths).
    """
    import keras_hub
    import numpy as np

    from dss_keras.data import make_dataset
    from dss_keras.preprocessor import MultiTaskPreprocessor

    pre = MultiTaskPreprocessor(keras_hub.models.T5Tokenizer(proto=spm),
                                max_input_length=MAX_LENGTH, max_label_length=MAX_LENGTH,
                                max_rationale_length=MAX_LENGTH)
    dataset, _ = make_dataset(records, pre, batch_size=batch_size, seed=0, repeat=True,
                              drop_remainder=True, bounded_shapes=True)
    arrays, shapes = {}, collections.Counter()
    for index, (x, y, w) in enumerate(dataset.take(count).as_numpy_iterator()):
        for task in x:
            for key, value in x[task].items():
                arrays[f"{index}/{task}/x/{key}"] = value.astype(
                    "uint16" if key.endswith("ids") else "uint8")
            arrays[f"{index}/{task}/y"] = y[task].astype("uint16")
            arrays[f"{index}/{task}/w"] = w[task].astype("uint8")
        shapes[shape_key(x, y)] += 1
    np.savez_compressed(path, **arrays)
    return dict(shapes)


def shape_key(x, y) -> str:
    return " ".join(f"{task}:{x[task]['encoder_token_ids'].shape[1]}x{y[task].shape[1]}"
                    for task in sorted(x))


def load_batches(path: Path) -> list:
    """The batches of `save_batches`, as `(x, y, sample_weight)` of int32/float32 arrays."""
    import numpy as np

    arrays = np.load(path)
    batches = collections.defaultdict(lambda: ({}, {}, {}))
    for key in arrays.files:
        index, task, kind, *name = key.split("/")
        x, y, w = batches[int(index)]
        value = arrays[key]
        if kind == "x":
            x.setdefault(task, {})[name[0]] = value.astype("int32")
        elif kind == "y":
            y[task] = value.astype("int32")
        else:
            w[task] = value.astype("float32")
    return [batches[i] for i in sorted(batches)]


def carried_wheels() -> list[str]:
    """`KERAS_WHEELS` at this machine's versions, and `PEER_WHEELS`."""
    from importlib import metadata

    return [f"{name}=={metadata.version(name)}" for name in KERAS_WHEELS] + list(PEER_WHEELS)


def missing_modules(python: str) -> list[str]:
    """The pip names of `PEER_MODULES` that `python` cannot import."""
    probe = ("import importlib.util, json, sys; print(json.dumps([m for m in sys.argv[1:] "
             "if importlib.util.find_spec(m) is None]))")
    done = subprocess.run([python, "-c", probe, *PEER_MODULES], capture_output=True,
                          text=True, check=True)
    return [PEER_MODULES[m] for m in json.loads(done.stdout)]


def download_wheels(folder: Path, python_version: str, names: list[str]) -> list[Path]:
    """The wheels of `names` (no dependencies) for CPython `python_version` on Linux x86-64."""
    folder.mkdir(parents=True, exist_ok=True)
    if names:
        platforms = [f"--platform=manylinux_2_{n}_x86_64" for n in (17, 24, 27, 28)]
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", f"--python-version={python_version}", "--implementation=cp",
             *platforms, "--platform=manylinux2014_x86_64", "-d", str(folder), *names],
            capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"pip could not download the wheels:\n{done.stderr[-3000:]}")
    return sorted(folder.glob("*.whl"))


# --- there: the run ----------------------------------------------------------------------


def run(args, bundle: Path, out: Path, *, deadline: float) -> list[dict]:
    """The short pass, then the measurement sized to the time left; results into `out`.

    A side that fails is reported (`errors.txt`) and the others go on.
    """
    manifest = json.loads((bundle / "bundle.json").read_text())
    tiny = manifest["shape"] != "base"
    sides = set(args.sides.split(","))
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dss_gpu_"))
    # A folder named site-packages: dill (their `datasets` hashes functions with it) pickles
    # modules from elsewhere by value, and pyarrow's cannot be.
    site = install_wheels([bundle / "wheels", bundle / "local_wheels"],
                          work / "lib" / "site-packages")
    with tarfile.open(bundle / "data" / "release.tar.xz") as tar:
        tar.extractall(work / "release", filter="data")
    blocker = None
    if tiny:  # as on the GPU machine, TensorFlow is not there for dss-keras
        blocker = work / "no_tensorflow"
        blocker.mkdir()
        (blocker / "sitecustomize.py").write_text(NO_TENSORFLOW)
    peer = peer_runner(args, bundle, work, site, manifest, tiny) if "official" in sides else None
    results = []

    def attempt(name: str, pass_name: str, function) -> dict | None:
        try:
            result = {**function(), "pass": pass_name}
        except Exception as error:  # noqa: BLE001  (reported; the other sides go on)
            message = f"{pass_name} {name}: FAILED: {error}"
            print(message, flush=True)
            with open(out / "errors.txt", "a", encoding="utf-8") as file:
                file.write(message + "\n")
            return None
        results.append(result)
        (out / f"{pass_name}.json").write_text(json.dumps(
            [r for r in results if r["pass"] == pass_name], indent=1))
        print(summary_line(result), flush=True)
        return result

    shapes = len(manifest["batch_shapes"])
    short_jax = short_peer = None
    if "jax" in sides:
        short_jax = attempt("dss-keras", "short", lambda: run_jax(
            bundle, work, site, blocker, steps=3 if tiny else 10, shapes=1))
    if peer:
        short_peer = attempt("official", "short", lambda: peer(
            steps=4 if tiny else 10, warmup=2 if tiny else 3))
    jax_steps, jax_shapes, peer_steps = plan(short_jax, short_peer, shapes, tiny,
                                             deadline - time.monotonic())
    if jax_steps:
        attempt("dss-keras", "long", lambda: run_jax(
            bundle, work, site, blocker, steps=jax_steps, shapes=jax_shapes))
    if peer_steps:
        attempt("official", "long", lambda: peer(steps=peer_steps, warmup=3 if tiny else 10))
    return results


def install_wheels(folders: list[Path], site: Path) -> Path:
    files = sorted(str(p) for folder in folders for p in folder.glob("*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index",
                    "--no-deps", "--no-compile", "--no-cache-dir", "--target", str(site),
                    *files], check=True)
    return site


def plan(jax_short: dict | None, peer_short: dict | None, shapes: int, tiny: bool,
         seconds_left: float) -> tuple[int, int, int]:
    """`(dss-keras steps, its batch shapes, the authors' steps)` of the measurement.

    As many as fit the time left, from 200 steps on every shape and 60 steps
    down: each side costs its short pass's wall time (start-up included) plus
    its steps, and dss-keras compiles each further batch shape once. A side
    whose short pass failed is left out (0 steps).
    """
    if tiny:
        return (6 if jax_short else 0), shapes, (6 if peer_short else 0)
    left = seconds_left - 30.0  # margin: the results, the table
    for fraction, jax_shapes in ((1.0, shapes), (0.6, shapes), (0.6, min(2, shapes)),
                                 (0.35, 1), (0.2, 1)):
        jax_steps, peer_steps = int(200 * fraction), int(60 * fraction)
        cost = 0.0
        if jax_short:
            cost += (jax_short["wall_seconds"] + jax_steps * jax_short["seconds_per_step"]
                     + (jax_shapes - 1) * jax_short["compile_seconds"])
        if peer_short:
            cost += peer_short["wall_seconds"] + peer_steps * peer_short["seconds_per_step"]
        if cost <= left:
            return (jax_steps if jax_short else 0), jax_shapes, (peer_steps if peer_short else 0)
    return 0, 0, 0  # no time: the short pass holds the figures


def peer_runner(args, bundle: Path, work: Path, site: Path, manifest: dict, tiny: bool):
    """A function `(steps, warmup) -> result` that runs the authors' side; None without torch."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)"
    done = subprocess.run([args.torch_python, "-c", probe], capture_output=True, text=True)
    if done.returncode not in (0, 3) or (done.returncode == 3 and not tiny):
        print(f"official: skipped, {args.torch_python} has no "
              f"{'torch' if done.returncode not in (0, 3) else 'CUDA GPU'} "
              f"({done.stderr.strip()[-200:]})", flush=True)
        return None
    sys.path.insert(0, str(HERE))
    from train_throughput import run_official

    os.environ.update({
        "VENV": "none", "PYTHON_BIN": args.torch_python, "WORK_DIR": str(work / "official"),
        "STANDIN_SHAPE": "small" if tiny else "base", "PYTHONPATH": str(site),
    })

    def run_peer(steps: int, warmup: int) -> dict:
        options = argparse.Namespace(
            official=str(bundle / "peer"), data_dir=str(work / "release"),
            batch_size=manifest["batch_size"], threads=2 if tiny else 8, bf16=True,
            warmup_steps=warmup, steps=steps - warmup)
        start = time.monotonic()
        result = run_official(options, None, bundle / "data" / "spm.model", work)
        return {**result, "side": "official (torch, bf16)",
                "wall_seconds": time.monotonic() - start,
                "peak_gpu_mb": result.get("peak_gpu_mb")}

    return run_peer


def run_jax(bundle: Path, work: Path, site: Path, blocker: Path | None, *, steps: int,
            shapes: int) -> dict:
    """One dss-keras measurement in its own process (its own GPU memory and peak)."""
    out = work / f"jax-{steps}-{shapes}.json"
    path = [str(p) for p in (blocker, site, ROOT) if p]
    env = {**os.environ, "KERAS_BACKEND": "jax", "XLA_PYTHON_CLIENT_PREALLOCATE": "false",
           "PYTHONPATH": os.pathsep.join(path), "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.monotonic()
    done = subprocess.run([sys.executable, __file__, "--side", "jax", "--bundle", str(bundle),
                           "--steps", str(steps), "--shapes", str(shapes),
                           "--json-out", str(out)], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"dss-keras on JAX failed:\n{done.stderr[-4000:]}")
    return {**json.loads(out.read_text()), "wall_seconds": time.monotonic() - start}


def measure_jax(args) -> dict:
    """Trains `--steps` timed steps after one compiling step per batch shape; the figures.

    Batches of the `--shapes` most common shapes are used. Each compiling step
    is timed to its end (the loss read back); the timed steps run back to back
    and are timed from the end of the last compiling step to the end of the
    last step.
    """
    import jax
    import keras

    from dss_keras import backbones
    from dss_keras.config import TrainConfig
    from dss_keras.training import build_model

    manifest = json.loads((args.bundle / "bundle.json").read_text())
    shape = SHAPES[manifest["shape"]]
    batches = load_batches(args.bundle / "data" / "batches.npz")
    common = [key for key, _ in collections.Counter(
        shape_key(x, y) for x, y, _ in batches).most_common(args.shapes or None)]
    batches = [b for b in batches if shape_key(b[0], b[1]) in common]
    first = {}
    for batch in batches:
        first.setdefault(shape_key(batch[0], batch[1]), batch)
    warmup = list(first.values())
    total = len(warmup) + args.steps
    stream = warmup + [batches[i % len(batches)] for i in range(args.steps)]
    config = TrainConfig(
        learning_rate=5e-5, lr_schedule="linear", steps=total, eval_every=total,
        adam_epsilon=1e-8, clip_global_norm=1.0, batch_size=manifest["batch_size"],
        max_input_length=MAX_LENGTH, max_label_length=MAX_LENGTH,
        max_rationale_length=MAX_LENGTH, dtype_policy=manifest["dtype"])
    start = time.perf_counter()
    lm = backbones.tiny_t5(proto=(args.bundle / "data" / "spm.model").read_bytes(),
                           embedding_size=VOCABULARY, dtype=config.dtype_policy, **shape)
    model = build_model(config, [], None, seq2seq_lm=lm)
    built = time.perf_counter() - start
    ends = {}

    class Clock(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch < len(warmup) or batch == total - 1:
                float(logs["loss"])  # waits for the step
                ends[batch] = time.perf_counter()

    fit_start = time.perf_counter()
    history = model.fit((batch for batch in stream), epochs=1, steps_per_epoch=total, verbose=0,
                        callbacks=[Clock()])
    timed = ends[total - 1] - ends[len(warmup) - 1]
    step = timed / args.steps
    compiles = [ends[0] - fit_start] + [ends[i] - ends[i - 1] for i in range(1, len(warmup))]
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    examples = sum(b[1]["label"].shape[0] for b in stream[len(warmup):])
    return {
        "side": "dss-keras (jax, bf16)",
        "examples_per_second": examples / timed,
        "seconds_per_step": step,
        "compile_seconds": max(0.0, sum(compiles) / len(compiles) - step),
        "first_step_seconds": compiles[0],
        "batch_shapes": common, "steps": args.steps, "warmup_steps": len(warmup),
        "build_seconds": built,
        "peak_gpu_mb": peak / 2**20 if peak is not None else None,
        "loss": float(history.history["loss"][-1]),
        "device": str(jax.devices()[0].device_kind), "jax": jax.__version__,
        "keras": keras.__version__, "compute_dtype": lm.backbone.compute_dtype,
        "tensorflow_imported": "tensorflow" in sys.modules,
    }


def summary_line(r: dict) -> str:
    peak = r.get("peak_gpu_mb")
    compile_part = (f", compile {r['compile_seconds']:.1f} s/shape"
                    if "compile_seconds" in r else "")
    return (f"{r['pass']:5s} {r['side']:24s} {r['examples_per_second']:8.1f} ex/s "
            f"{r['seconds_per_step']:7.3f} s/step{compile_part}, peak GPU "
            + (f"{peak:.0f} MiB" if peak is not None else "n/a"))


def print_table(results: list[dict], dry_run: bool = False) -> None:
    """Each pass's two sides and the ratios dss-keras / official."""
    print("\npass   side                       ex/s   s/step  compile s  peak GPU MiB")
    for r in results:
        peak = r.get("peak_gpu_mb")
        first = r.get("compile_seconds", r.get("first_step_seconds"))
        print(f"{r['pass']:6s} {r['side']:24s} {r['examples_per_second']:7.1f} "
              f"{r['seconds_per_step']:8.3f} " + (f"{first:9.1f} " if first else f"{'':10s}")
              + (f"{peak:13.0f}" if peak is not None else f"{'n/a':>13s}"))
    for name in ("short", "long"):
        sides = {r["side"].split(" ")[0]: r for r in results if r["pass"] == name}
        if {"dss-keras", "official"} <= set(sides):
            ours, theirs = sides["dss-keras"], sides["official"]
            memory = (f", peak GPU memory {ours['peak_gpu_mb'] / theirs['peak_gpu_mb']:.2f}x"
                      if ours.get("peak_gpu_mb") and theirs.get("peak_gpu_mb") else "")
            ratio = ours["examples_per_second"] / theirs["examples_per_second"]
            print(f"{name}: dss-keras {ratio:.2f}x the authors' examples/s{memory}")
    if dry_run:
        print("dry run: the sides train different shapes (dss-keras tiny, the authors' "
              "t5-v1_1-small stand-in) on the CPU; the ratios check the report, not the speed")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.side == "jax":
        args.json_out.write_text(json.dumps(measure_jax(args)))
        return 0
    start = time.monotonic()
    if args.prepare:
        prepare(args, args.bundle or BUNDLE, shape="base", batch_size=64,
                python_version=args.python_version)
        return 0
    if args.cpu_step_time:
        return cpu_step_time(args)
    if args.dry_run:
        bundle = args.bundle or DRY_BUNDLE
        args.batches = min(args.batches, 6)
        peer_python = args.torch_python if _has_torch(args.torch_python) else None
        if peer_python is None and "official" in args.sides:
            print(f"official: {args.torch_python} has no torch, so the dry run skips the "
                  "authors' side (give --torch-python PYTHON to include it)", flush=True)
            args.sides = "jax"
        prepare(args, bundle, shape="tiny", batch_size=4, peer_python=peer_python,
                python_version=f"{sys.version_info.major}.{sys.version_info.minor}")
    else:
        bundle = args.bundle or BUNDLE
        if not (bundle / "bundle.json").exists():
            raise SystemExit(f"No bundle at {bundle}: make it with --prepare first. "
                             f"Received: bundle={bundle}")
    out = args.out or bundle / "results"
    results = run(args, bundle, Path(out), deadline=start + args.budget)
    print_table(results, dry_run=args.dry_run)
    print(f"\n{time.monotonic() - start:.0f} s in all; results in {out}")
    return 0


def cpu_step_time(args) -> int:
    """dss-keras on JAX beside its TensorFlow fast path on this CPU: t5-v1_1-small, batch 8.

    Both float32, on the CQA inputs of `train_throughput.py`; each side as
    `dss-keras train` runs it on its backend (JAX: Keras' train step under XLA
    on `bounded_shapes` batches, each shape compiled once before the timed
    steps; TensorFlow: the `fast` variant of `train_throughput.py`).
    """
    bundle = args.bundle or CPU_BUNDLE
    prepare(args, bundle, shape="small", batch_size=8, dtype="float32")
    work = Path(tempfile.mkdtemp(prefix="dss_cpu_"))
    load = os.getloadavg()[0]
    jax = run_jax(bundle, work, None, None, steps=args.steps, shapes=0)
    out = work / "tensorflow.json"
    done = subprocess.run(
        [sys.executable, str(HERE / "train_throughput.py"), "--data-dir", args.data_dir,
         "--variants", "fast", "--skip-reference", "--batch-size", "8", "--steps",
         str(args.steps), "--json-out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"train_throughput.py failed:\n{done.stderr[-3000:]}")
    tensorflow = json.loads(out.read_text())[0]
    print(f"\nt5-v1_1-small shape, batch 8, float32, {os.cpu_count()} CPU cores, load average "
          f"before {load:.2f}")
    for name, r in (("dss-keras on JAX (XLA)", jax),
                    ("dss-keras on TensorFlow (fast)", tensorflow)):
        print(f"{name:32s} {r['seconds_per_step']:7.3f} s/step "
              f"{r['examples_per_second']:6.2f} ex/s")
    ratio = jax["seconds_per_step"] / tensorflow["seconds_per_step"]
    print(f"JAX / TensorFlow step time: {ratio:.2f}x; JAX compiled "
          f"{len(jax['batch_shapes'])} shapes, {jax['compile_seconds']:.0f} s each")
    return 0


def _has_torch(python: str) -> bool:
    probe = "import importlib.util, sys; sys.exit(importlib.util.find_spec('torch') is None)"
    return subprocess.run([python, "-c", probe], capture_output=True).returncode == 0


if __name__ == "__main__":
    sys.exit(main())
