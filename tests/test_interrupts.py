"""A Ctrl-C that Python drops (raised inside a garbage-collector callback) still stops
the command: training is not marked finished, and the exit status is 130."""

import gc
import os
import signal
import sys

import keras
import pytest

from dss_keras import cli, interrupts, testing
from dss_keras.config import TrainConfig
from dss_keras.data import Splits

from test_failures import TINY


def drop_a_ctrl_c() -> None:
    """Sends SIGINT so that its handler runs inside a collector callback, as JAX's
    (registered whenever TensorFlow imports JAX) makes likely: Python reports the
    `KeyboardInterrupt` as unraisable and goes on."""

    def collecting(phase, info):
        if phase == "start":
            signal.raise_signal(signal.SIGINT)  # the handler runs here, before this returns

    gc.callbacks.append(collecting)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(collecting)


def test_python_drops_the_interrupt_but_the_record_keeps_it(monkeypatch):
    shown = []
    monkeypatch.setattr(sys, "unraisablehook", shown.append)
    drop_a_ctrl_c()  # no recording: Python's own handler, and the interrupt is lost
    assert [info.exc_type for info in shown] == [KeyboardInterrupt]
    shown.clear()
    with interrupts.recording_ctrl_c():
        assert not interrupts.received()
        drop_a_ctrl_c()  # went on: nothing was raised here
        assert interrupts.received()
        with pytest.raises(KeyboardInterrupt):
            interrupts.raise_if_interrupted()
    assert shown == []  # not printed as "Exception ignored"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert sys.unraisablehook == shown.append
    interrupts.raise_if_interrupted()  # the record ends with the block


def test_a_handler_the_program_set_stays(monkeypatch):
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, mine)
    try:
        with interrupts.recording_ctrl_c():
            assert signal.getsignal(signal.SIGINT) is mine
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("then", ["returns", "fails"])
def test_a_command_that_went_on_after_a_dropped_ctrl_c_exits_130(capsys, then):
    def command():
        drop_a_ctrl_c()
        if then == "fails":  # as TensorFlow does when a trace was cut short
            raise ValueError("tf.function only supports singleton tf.Variables")
        return 0

    assert cli._as_command(lambda: None, lambda args: command()) == 130
    assert capsys.readouterr().err == "dss-keras: interrupted\n"


class DropCtrlCAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.step:
            drop_a_ctrl_c()


@pytest.mark.slow
def test_training_stops_at_the_next_step_and_is_not_finished(tmp_path):
    from dss_keras import run_dir as runs
    from dss_keras.training import train

    records = testing.toy_records(24)
    splits = Splits(records[:20], records[20:], [])
    config = TrainConfig(run_dir=str(tmp_path / "run"), **TINY)
    with interrupts.recording_ctrl_c(), pytest.raises(KeyboardInterrupt):
        train(config, splits, callbacks=[DropCtrlCAt(step=1)], verbose=0)
    assert not os.path.exists(tmp_path / "run" / runs.METRICS)
    result = train(config, splits, verbose=0)  # the rerun ends the run
    assert result.metrics["steps_trained"] == TINY["steps"]
    assert os.path.exists(tmp_path / "run" / runs.METRICS)
