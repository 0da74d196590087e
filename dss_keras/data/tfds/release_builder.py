"""What the four benchmark builders share: features, splits, manual_dir."""

from __future__ import annotations

import inspect
import os
from typing import ClassVar

import tensorflow_datasets as tfds
from etils import epath

from dss_keras.data import official

HOMEPAGE = "https://github.com/google-research/distilling-step-by-step"


def manual_download_instructions(name: str) -> str:
    """The `MANUAL_DOWNLOAD_INSTRUCTIONS` of the builder of benchmark `name`."""
    return f"""
Download `datasets.zip` of the Distilling step-by-step release ({HOMEPAGE}),
unzip it, and pass the folder that holds `{name}/` (or the `datasets/` folder
inside it) as `manual_dir`. It must hold `{name}/{name}_<split>.json` and the
teacher outputs `{name}/llm/<split>_CoT_<k>.json`.
"""


class ReleaseBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Records of one benchmark of the release, with the teacher's outputs.

    Features: `id`, `input`, `label` (the gold label), `rationale` and
    `llm_label` (the teacher's; empty strings where its output did not
    parse). Splits: `train`, `valid`, `test`; for cqa and svamp, `valid` is
    10% of the release's train split (seed 0) and `train` the rest, as in
    `dss_keras.data.official.load_benchmark`.
    """

    BENCHMARK: ClassVar[str]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # The builder's own file. TFDS's default looks the package up as a
        # resource first, which needs `importlib_resources` (an optional
        # dependency of etils); the answer is the same for a normal install.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        text = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {name: text for name in ("id", "input", "label", "rationale", "llm_label")}
            ),
            supervised_keys=("input", "label"),
            homepage=HOMEPAGE,
        )

    def _release_dir(self, manual_dir) -> str:
        root = os.fspath(manual_dir)
        nested = os.path.join(root, "datasets")
        if not os.path.isdir(os.path.join(root, self.BENCHMARK)) and os.path.isdir(
            os.path.join(nested, self.BENCHMARK)
        ):
            return nested
        return root

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = self._release_dir(dl_manager.manual_dir)
        return {
            split: self._generate_examples(
                official.load_benchmark(self.BENCHMARK, root, split)
            )
            for split in ("train", "valid", "test")
        }

    def _generate_examples(self, records):
        for record in records:
            yield record.id, {
                "id": record.id,
                "input": record.input,
                "label": record.label,
                "rationale": record.rationale or "",
                "llm_label": record.llm_label or "",
            }
