import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture
def tiny_model():
    """A fresh tiny `DistillStepByStep` with short budgets."""
    from dss_keras import testing

    return testing.tiny_model()
