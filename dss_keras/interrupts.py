"""Ctrl-C that a long command cannot lose.

Python runs a signal's handler at the main thread's next bytecode, which may
belong to a garbage-collector callback or a `__del__` method (JAX, which
TensorFlow imports when it is installed, registers a collector callback that
runs on every collection). A `KeyboardInterrupt` raised there is printed as
"Exception ignored" and dropped, and the program goes on as if no key had been
pressed: a training run would finish and be saved as finished.

`recording_ctrl_c()` installs a handler that raises *and* records each Ctrl-C
(and keeps the dropped one's "Exception ignored" traceback off the screen);
`raise_if_interrupted()` raises again wherever a command must not go on past a
Ctrl-C (after each training step, before a run is marked finished, after each
teacher answer). Outside `recording_ctrl_c()` it does nothing, so a library
user's own signal handling stays theirs.

Example:

>>> from dss_keras import interrupts
>>> with interrupts.recording_ctrl_c():
...     interrupts.raise_if_interrupted()  # no Ctrl-C: returns
...     interrupts.received()
False
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import Iterator

_RECEIVED: list[int] = []


def _record_and_raise(signum, frame) -> None:
    _RECEIVED.append(signum)
    raise KeyboardInterrupt


@contextlib.contextmanager
def recording_ctrl_c() -> Iterator[None]:
    """Within the block, each Ctrl-C raises `KeyboardInterrupt` and is remembered.

    Takes effect only in the main thread and while Python's default handler is
    installed (a handler the program set itself is left alone). The record is
    cleared when the block ends.
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _RECEIVED.clear()
    previous = signal.signal(signal.SIGINT, _record_and_raise)
    previous_hook = sys.unraisablehook

    def unraisable(info) -> None:  # the dropped Ctrl-C is recorded: no "Exception ignored"
        if not (info.exc_type is KeyboardInterrupt and _RECEIVED):
            previous_hook(info)

    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = previous_hook
        _RECEIVED.clear()


def received() -> bool:
    """Whether a Ctrl-C came during the current `recording_ctrl_c()` block."""
    return bool(_RECEIVED)


def raise_if_interrupted() -> None:
    """Raises `KeyboardInterrupt` if a Ctrl-C came, even one that was swallowed."""
    if _RECEIVED:
        raise KeyboardInterrupt
