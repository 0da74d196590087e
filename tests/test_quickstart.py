import json
import os
import re
import subprocess
import sys

import pytest

from dss_keras import cli, quickstart
from dss_keras.export import load_and_predict

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# TensorFlow's C++ log lines ("W0000 00:00:1796181675.183190 3044 op_level_cost...")
# and the notice that precedes them.
CPP_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d|absl::InitializeLog")


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_serves(tmp_path, capsys):
    run_dir, export_dir = str(tmp_path / "runs"), str(tmp_path / "saved")
    assert cli.main(["quickstart", "--run-dir", run_dir, "--steps", "6", "--num-train", "64",
                     "--seed", "3", "--export-dir", export_dir, "--examples-per-row", "3"]) == 0
    out = capsys.readouterr().out
    assert "standard finetuning" in out and "distilling step-by-step" in out
    assert "label accuracy" in out and "seed 3" in out
    for mode in ("standard", "distill_step_by_step"):
        assert os.path.exists(os.path.join(run_dir, "seed-3", mode, "model.keras"))
        with open(os.path.join(run_dir, "seed-3", mode, "config.json")) as file:
            assert json.load(file)["examples_per_row"] == 3
    assert quickstart.get_config().examples_per_row == 1  # unpacked unless asked
    assert os.listdir(export_dir) == ["1"]
    assert "-> " in out
    assert len(load_and_predict(export_dir, ["Ana has 3 cups. How many cups does Ana have?"])) == 1


@pytest.mark.slow
def test_make_demo_output_holds_no_tensorflow_log_lines(tmp_path):
    """The quickstart as `make demo` runs it (fewer steps): only what it prints itself."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP")}
    completed = subprocess.run(
        [sys.executable, "recipes/quickstart.py", "--steps", "2", "--num-train", "32",
         "--run-dir", str(tmp_path / "runs"), "--export-dir", str(tmp_path / "saved")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    output = completed.stdout + completed.stderr
    assert "distilling step-by-step" in output
    noisy = [line for line in output.splitlines()
             if CPP_LOG_LINE.search(line) or "warning" in line.lower()]
    assert noisy == []


def test_quickstart_config_rejects_unknown_overrides():
    with pytest.raises(ValueError, match="Unknown config field"):
        quickstart.get_config(stepz=3)


def test_quickstart_and_data_efficiency_share_the_setting():
    """The benchmark's word-problem run at 100% and 1,200 steps is the quickstart's run."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "data_efficiency", os.path.join(REPO, "benchmarks", "data_efficiency.py"))
    benchmark = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = benchmark  # dataclasses look their module up
    try:
        spec.loader.exec_module(benchmark)
    finally:
        del sys.modules[spec.name]
    for mode in quickstart.MODES.values():
        run = benchmark.run_config(benchmark.GRIDS["full"]["word_problems"], mode, 1.0, 0,
                                   1200, 400, "runs/x")
        assert run == quickstart.get_config(run_dir="runs/x", mode=mode)
