"""SVAMP (svamp): arithmetic word problems, scored by the value of the generated equation.

The paper's run (T5 v1.1 base, 10,000 steps of batch 64, lr 5e-5; a GPU):

    python recipes/svamp.py --data-dir path/to/datasets
    python recipes/svamp.py --data-dir path/to/datasets --mode standard \\
        --run-dir runs/svamp-standard
    python recipes/svamp.py --tfds --data-dir path/to/datasets --label-source llm

A tiny T5 trained from scratch, on CPU in a few minutes:

    python recipes/svamp.py --data-dir path/to/datasets --preset tiny --steps 300 \\
        --run-dir runs/svamp-tiny

`path/to/datasets` is the unzipped `datasets.zip` of the authors' release
(it holds `svamp/svamp_train.json`, `svamp/svamp_test.json` and `svamp/llm/`).
Valid is 10% of train (seed 0). A prediction is right when its equation has
the gold equation's value (`dss_keras.metrics`). Results go to
`<run-dir>/results.json`, the model to `saved_models/svamp-<mode>/<version>/`.
"""

import sys

from dss_keras import cli, experiments


def get_config() -> experiments.BenchmarkRecipe:
    """The paper's settings; the tiny vocabulary splits digits: 1,000 pieces do for 700 problems."""
    return experiments.BenchmarkRecipe(
        benchmark="svamp",
        tiny={"vocabulary_size": 1000, "max_input_length": 256, "max_label_length": 32,
              "max_rationale_length": 128},
    )


if __name__ == "__main__":
    sys.exit(cli.run_recipe(get_config(), description=__doc__))
