"""The TFDS builders of the four benchmarks, on their dummy data."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from dss_keras.data.tfds import BUILDERS  # noqa: E402  (registers the builders)
from dss_keras.data.tfds.dss_anli1 import dss_anli1_dataset_builder  # noqa: E402
from dss_keras.data.tfds.dss_cqa import dss_cqa_dataset_builder  # noqa: E402
from dss_keras.data.tfds.dss_esnli import dss_esnli_dataset_builder  # noqa: E402
from dss_keras.data.tfds.dss_svamp import dss_svamp_dataset_builder  # noqa: E402


try:  # tfds.testing needs `dill` (tensorflow-datasets' test extra)
    import dill  # noqa: F401

    HAVE_TEST_HARNESS = True
except ImportError:
    HAVE_TEST_HARNESS = False


def test_builder_test_harness_is_available():
    if not HAVE_TEST_HARNESS:
        pytest.skip("tfds.testing needs the `dill` package")


if HAVE_TEST_HARNESS:

    class DssCqaTest(tfds.testing.DatasetBuilderTestCase):
        DATASET_CLASS = dss_cqa_dataset_builder.Builder
        SPLITS = {"train": 9, "valid": 1, "test": 3}

    class DssSvampTest(tfds.testing.DatasetBuilderTestCase):
        DATASET_CLASS = dss_svamp_dataset_builder.Builder
        SPLITS = {"train": 9, "valid": 1, "test": 3}

    class DssEsnliTest(tfds.testing.DatasetBuilderTestCase):
        DATASET_CLASS = dss_esnli_dataset_builder.Builder
        SPLITS = {"train": 4, "valid": 2, "test": 1}

    class DssAnli1Test(tfds.testing.DatasetBuilderTestCase):
        DATASET_CLASS = dss_anli1_dataset_builder.Builder
        SPLITS = {"train": 3, "valid": 1, "test": 2}


def test_builders_are_registered():
    assert set(BUILDERS) <= set(tfds.list_builders())
    assert BUILDERS["dss_cqa"].name == "dss_cqa"


def test_tfds_load_with_a_slice(tmp_path):
    manual_dir = Path(dss_cqa_dataset_builder.__file__).parent / "dummy_data"
    ds = tfds.load(
        "dss_cqa",
        split="train[:50%]",
        data_dir=str(tmp_path),
        download_and_prepare_kwargs={
            "download_config": tfds.download.DownloadConfig(manual_dir=str(manual_dir))
        },
    )
    examples = list(ds.as_numpy_iterator())
    assert 1 <= len(examples) <= 5
    parsed = [e for e in examples if e["llm_label"]]
    assert parsed and all(e["llm_label"] == e["label"] for e in parsed)
    assert all(b"\nAnswer Choices:\n(a) " in e["input"] for e in examples)
    unparsed = [e for e in examples if not e["llm_label"]]
    assert all(e["rationale"] == b"" for e in unparsed)


def test_importing_the_data_package_does_not_import_tfds():
    code = (
        "import sys, dss_keras.data, dss_keras.data.official, dss_keras.data.splits; "
        "print('tensorflow_datasets' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_manual_dir_may_be_the_unzipped_release(tmp_path):
    dummy = Path(dss_svamp_dataset_builder.__file__).parent / "dummy_data" / "svamp"
    shutil.copytree(dummy, tmp_path / "release" / "datasets" / "svamp")
    builder = tfds.builder("dss_svamp", data_dir=str(tmp_path / "data"))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "release"))
    )
    assert builder.info.splits["test"].num_examples == 3
    assert builder.info.version == "1.0.0"
