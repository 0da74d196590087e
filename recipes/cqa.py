"""CommonsenseQA (cqa): distilling step-by-step from PaLM 540B rationales into T5.

The paper's run (T5 v1.1 base, 10,000 steps of batch 64, lr 5e-5; a GPU):

    python recipes/cqa.py --data-dir path/to/datasets
    python recipes/cqa.py --data-dir path/to/datasets --mode standard --run-dir runs/cqa-standard
    python recipes/cqa.py --tfds --data-dir path/to/datasets --label-source llm

A tiny T5 trained from scratch, on CPU in a few minutes:

    python recipes/cqa.py --data-dir path/to/datasets --preset tiny --steps 300 \\
        --train-fraction 0.25 --run-dir runs/cqa-tiny

`path/to/datasets` is the unzipped `datasets.zip` of the authors' release
(it holds `cqa/cqa_train.json`, `cqa/cqa_test.json` and `cqa/llm/`). Valid is
10% of train (seed 0). Results go to `<run-dir>/results.json`, the model to
`saved_models/cqa-<mode>/<version>/`. `--help` lists every flag.
"""

import sys

from dss_keras import cli, experiments


def get_config() -> experiments.BenchmarkRecipe:
    """The paper's settings; a 3,000-piece vocabulary for the tiny model's English text."""
    return experiments.BenchmarkRecipe(
        benchmark="cqa",
        tiny={"vocabulary_size": 3000, "max_input_length": 256, "max_label_length": 16,
              "max_rationale_length": 128},
    )


if __name__ == "__main__":
    sys.exit(cli.run_recipe(get_config(), description=__doc__))
