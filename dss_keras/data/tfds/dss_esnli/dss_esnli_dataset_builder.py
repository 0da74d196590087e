"""e-SNLI with PaLM 540B rationales (`dss_esnli`), read from the release in `manual_dir`."""

import tensorflow_datasets as tfds

from dss_keras.data.tfds import release_builder


class Builder(release_builder.ReleaseBuilder):
    """e-SNLI with PaLM 540B rationales."""

    BENCHMARK = "esnli"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {
        "1.0.0": "Initial release: the authors' release with the PaLM 540B rationales"
        ", own valid split.",
    }
    MANUAL_DOWNLOAD_INSTRUCTIONS = release_builder.manual_download_instructions("esnli")
