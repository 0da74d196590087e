import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402


@pytest.fixture
def tiny_model():
    """A fresh tiny `DistillStepByStep` with short budgets."""
    from dss_keras import testing

    return testing.tiny_model()


@pytest.fixture
def cli_error(capsys):
    """`cli_error(*argv)` runs `dss-keras ARGV` in this process and returns its exit status and
    its one `dss-keras: error:` line (there must be exactly one, and no traceback)."""
    from dss_keras import cli

    def run(*argv):
        try:
            status = cli.main(list(argv))
        except SystemExit as exit_info:
            status = exit_info.code
        err = capsys.readouterr().err
        lines = [line for line in err.strip().splitlines()
                 if line.startswith("dss-keras: error:")]
        assert len(lines) == 1 and "Traceback" not in err, err
        return status, lines[0]

    return run
