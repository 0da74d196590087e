"""ANLI round 1 with PaLM 540B rationales (`dss_anli1`), read from the release in `manual_dir`."""

import tensorflow_datasets as tfds

from dss_keras.data.tfds import release_builder


class Builder(release_builder.ReleaseBuilder):
    """ANLI round 1 with PaLM 540B rationales."""

    BENCHMARK = "anli1"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: the authors' release with the PaLM 540B rationales"
        ", own valid split.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = release_builder.manual_download_instructions("anli1")
