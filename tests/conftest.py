import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture
def tiny_model():
    """A fresh tiny `DistillStepByStep` with short budgets."""
    from dss_keras import testing
    from dss_keras.model import DistillStepByStep

    return DistillStepByStep(
        testing.tiny_seq2seq_lm(),
        max_input_length=48,
        max_label_length=4,
        max_rationale_length=16,
    )
