"""e-SNLI (esnli): natural language inference with PaLM 540B rationales.

The paper's run (T5 v1.1 base, 10,000 steps of batch 64, lr 5e-5; a GPU):

    python recipes/esnli.py --data-dir path/to/datasets
    python recipes/esnli.py --data-dir path/to/datasets --train-fraction 0.125 \\
        --run-dir runs/esnli-0.125
    python recipes/esnli.py --tfds --data-dir path/to/datasets --label-source llm

A tiny T5 trained from scratch, on CPU:

    python recipes/esnli.py --data-dir path/to/datasets --preset tiny --steps 300 \\
        --train-fraction 0.01 --run-dir runs/esnli-tiny

`path/to/datasets` is the unzipped `datasets.zip` of the authors' release
(it holds `esnli/esnli_<split>.json` for train, valid and test, and
`esnli/llm/`). The input is the premise, ` </s> `, then the hypothesis; the
label is entailment, neutral or contradiction. Results go to
`<run-dir>/results.json`, the model to `saved_models/esnli-<mode>/<version>/`.
"""

import sys

from dss_keras import cli, experiments


def get_config() -> experiments.BenchmarkRecipe:
    """The paper's settings; short NLI inputs fit a 128-token tiny model, labels 8 tokens."""
    return experiments.BenchmarkRecipe(
        benchmark="esnli",
        tiny={"vocabulary_size": 3000, "max_input_length": 128, "max_label_length": 8,
              "max_rationale_length": 128},
    )


if __name__ == "__main__":
    sys.exit(cli.run_recipe(get_config(), description=__doc__))
