"""ANLI round 1 (anli1): adversarial natural language inference with PaLM 540B rationales.

The paper's run (T5 v1.1 base, 10,000 steps of batch 64, lr 5e-5; a GPU):

    python recipes/anli1.py --data-dir path/to/datasets
    python recipes/anli1.py --data-dir path/to/datasets --mode standard \\
        --run-dir runs/anli1-standard
    python recipes/anli1.py --tfds --data-dir path/to/datasets --label-source llm

A tiny T5 trained from scratch, on CPU:

    python recipes/anli1.py --data-dir path/to/datasets --preset tiny --steps 300 \\
        --train-fraction 0.1 --run-dir runs/anli1-tiny

`path/to/datasets` is the unzipped `datasets.zip` of the authors' release
(it holds `anli1/anli1_<split>.json` for train, valid and test, and
`anli1/llm/`). The input is the premise, ` </s> `, then the hypothesis; the
label is entailment, neutral or contradiction. Results go to
`<run-dir>/results.json`, the model to `saved_models/anli1-<mode>/<version>/`.
"""

import sys

from dss_keras import cli, experiments


def get_config() -> experiments.BenchmarkRecipe:
    """The paper's settings; ANLI premises are paragraphs, so the tiny model reads 256 tokens."""
    return experiments.BenchmarkRecipe(
        benchmark="anli1",
        tiny={"vocabulary_size": 3000, "max_input_length": 256, "max_label_length": 8,
              "max_rationale_length": 128},
    )


if __name__ == "__main__":
    sys.exit(cli.run_recipe(get_config(), description=__doc__))
