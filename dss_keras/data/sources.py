"""One loader for every source of records: `load(source) -> Splits`.

| `source`                         | train                       | validation                  | test              |
|----------------------------------|-----------------------------|-----------------------------|-------------------|
| `"train.jsonl"`, `"train.csv"`   | the file                    | `validation_file`, or carved | `test_file`      |
| `"cqa"`, `"svamp"`               | the authors' release, 90%   | 10% of release train (seed 0) | release test    |
| `"esnli"`, `"anli1"`             | the authors' release        | release valid               | release test      |
| `"tfds:<benchmark>"`             | the `dss_<benchmark>` TFDS builder, same splits as the release         |||
| `"word_problems[:N]"`            | N generated problems (2,000) | carved                      | N/4 more (seed 10,000) |

"Carved" means `validation_fraction` of train, by `splits.split_validation`
(nothing when it is 0). The release is read from `data_dir` (default
`$DSS_DATA_DIR`); a TFDS builder reads it from there (its `manual_dir`) the
first time it is prepared, into TFDS's data directory (`$TFDS_DATA_DIR`).
Benchmark records come ordered by id, from either source, so a seed picks the
same subsets from both.

Examples:

>>> splits = load("word_problems:40", validation_fraction=0.25)
>>> len(splits.train), len(splits.validation), len(splits.test)
(30, 10, 10)
"""

from __future__ import annotations

import dataclasses
import os

from dss_keras.config import BENCHMARKS, DEFAULT_VALIDATION_FRACTION
from dss_keras.data import splits as splitting
from dss_keras.data.records import Record, read_records

WORD_PROBLEMS = "word_problems"
DEFAULT_NUM_WORD_PROBLEMS = 2000
WORD_PROBLEMS_TEST_SEED = 10_000


@dataclasses.dataclass(frozen=True)
class Splits:
    """Train, validation and test records of one source (validation/test may be empty)."""

    train: list[Record]
    validation: list[Record]
    test: list[Record]


def load(
    source: str,
    *,
    data_dir: str | None = None,
    validation_file: str | None = None,
    test_file: str | None = None,
    validation_fraction: float = DEFAULT_VALIDATION_FRACTION,
) -> Splits:
    """Reads the records of `source`; see the module docstring for the sources.

    Args:
        source: A records file, a benchmark name, `tfds:<benchmark>` or
            `word_problems[:N]`.
        data_dir: The release folder of a benchmark (`$DSS_DATA_DIR` when
            `None`).
        validation_file, test_file: More record files (file sources only).
        validation_fraction: Share of train carved out for validation when
            the source has no validation split.

    Returns:
        `Splits`.

    Raises:
        RecordError: for a bad record (the message names file, line, field).
        FileNotFoundError: for a missing file or release folder.
        ValueError: for an unknown source or options that do not apply to it.
    """
    name = source.removeprefix("tfds:")
    if name in BENCHMARKS:
        if validation_file or test_file:
            raise ValueError(f"{source!r} brings its own splits; pass no validation or test file.")
        data_dir = data_dir or os.environ.get("DSS_DATA_DIR")
        if source.startswith("tfds:"):
            return _load_tfds(name, data_dir)
        return _load_release(name, data_dir)
    if source.startswith("tfds:"):
        raise ValueError(
            f"TFDS builders exist for {', '.join(BENCHMARKS)}. Received: source={source!r}"
        )
    if data_dir is not None:
        raise ValueError(f"`data_dir` is for benchmarks only. Received: source={source!r}")
    if source == WORD_PROBLEMS or source.startswith(WORD_PROBLEMS + ":"):
        train, test = _word_problems(source)
    else:
        train = read_records(source)
        test = read_records(test_file) if test_file else []
    if not train:
        raise ValueError(f"{source}: no records to train on.")
    if validation_file:
        validation = read_records(validation_file)
    elif validation_fraction > 0:
        train, validation = splitting.split_validation(train, validation_fraction)
    else:
        validation = []
    return Splits(train, validation, test)


def _word_problems(source: str) -> tuple[list[Record], list[Record]]:
    from dss_keras.data.word_problems import word_problems

    count = source.partition(":")[2]
    if count and not count.isdigit():
        raise ValueError(f"Expected word_problems:N, N a whole number. Received: {source!r}")
    num_train = int(count or DEFAULT_NUM_WORD_PROBLEMS)
    return (word_problems(num_train, seed=0),
            word_problems(max(num_train // 4, 1), seed=WORD_PROBLEMS_TEST_SEED))


def _by_id(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: r.id)


def _load_release(name: str, data_dir: str | None) -> Splits:
    from dss_keras.data import official

    if data_dir is None:
        raise ValueError(
            f"{name} is read from the authors' release: pass its folder as `data_dir` "
            f"(--data-dir) or set DSS_DATA_DIR. Its layout is {official.LAYOUT}"
        )
    if not os.path.isdir(os.path.join(data_dir, name)):
        raise FileNotFoundError(
            f"{data_dir}: no folder {name}/ in it; the release layout is {official.LAYOUT}"
        )
    return Splits(*(_by_id(official.load_benchmark(name, data_dir, split))
                    for split in ("train", "valid", "test")))


def _load_tfds(name: str, manual_dir: str | None) -> Splits:
    import tensorflow_datasets as tfds

    import dss_keras.data.tfds  # noqa: F401  (registers the builders)

    # TFDS reads $TFDS_DATA_DIR once, at import; read it here at call time.
    builder = tfds.builder(f"dss_{name}", data_dir=os.environ.get("TFDS_DATA_DIR"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
    )
    loaded = []
    for split in ("train", "valid", "test"):
        records = []
        for example in builder.as_dataset(split=split).as_numpy_iterator():
            text = {k: v.decode("utf-8") for k, v in example.items()}
            records.append(Record(text["id"], text["input"], text["label"],
                                  text["rationale"] or None, text["llm_label"] or None))
        loaded.append(_by_id(records))
    return Splits(*loaded)
