import os

import pytest

from dss_keras import demo
from dss_keras.export import load_and_predict


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_serves(tmp_path, capsys):
    run_dir, export_dir = str(tmp_path / "runs"), str(tmp_path / "saved")
    assert demo.main(["--run-dir", run_dir, "--steps", "6", "--num-train", "64",
                      "--export-dir", export_dir]) == 0
    out = capsys.readouterr().out
    assert "standard finetuning" in out and "distilling step-by-step" in out
    assert "label accuracy" in out
    for mode in ("standard", "distill_step_by_step"):
        assert os.path.exists(os.path.join(run_dir, mode, "model.keras"))
    assert os.listdir(export_dir) == ["1"]
    assert "-> " in out
    assert len(load_and_predict(export_dir, ["Ana has 3 cups. How many cups does Ana have?"])) == 1


def test_quickstart_config_rejects_unknown_overrides():
    with pytest.raises(ValueError, match="Unknown config field"):
        demo.quickstart_config(stepz=3)
