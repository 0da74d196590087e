"""CommonsenseQA with PaLM 540B rationales (`dss_cqa`), read from the release in `manual_dir`."""

import tensorflow_datasets as tfds

from dss_keras.data.tfds import release_builder


class Builder(release_builder.ReleaseBuilder):
    """CommonsenseQA with PaLM 540B rationales."""

    BENCHMARK = "cqa"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: the authors' release with the PaLM 540B rationales"
        "; valid is 10% of train (seed 0).",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = release_builder.manual_download_instructions("cqa")
