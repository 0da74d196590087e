"""One trainer per run directory: `train.lock` while a process trains there.

The lock is an advisory `flock` on `<run_dir>/train.lock`, a file that holds
the trainer's process id and host. The operating system releases it when the
process ends, however it ends, so a lock left by a process that died (killed,
crashed, machine rebooted) is simply taken over by the next trainer; a second
process while the first still runs is refused with the first's process id.
Readers (`dss-keras predict`, `evaluate`, `export`) ask `holder()` whether a
run is still training.

Examples:

>>> import tempfile
>>> run_dir = tempfile.mkdtemp()
>>> with RunLock(run_dir):
...     holder(run_dir) is not None
True
>>> holder(run_dir) is None
True
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import json
import logging
import os
import socket
import time

from dss_keras.files import process_alive

logger = logging.getLogger(__name__)

LOCK = "train.lock"
# A lock seen held by a process that is gone is a reader's brief probe, or a holder that is
# just letting go: asked again for up to this many seconds before refusing.
_SETTLE_SECONDS = 2.0


class RunDirectoryBusy(RuntimeError):
    """Another process trains in the run directory."""


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a run directory's lock.

    Attributes:
        pid: Its process id (`None` while it has not written it yet).
        host: The machine it runs on.
    """

    pid: int | None
    host: str

    def __str__(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "a process"
        return who if self.host == socket.gethostname() else f"{who} on {self.host}"

    @property
    def running(self) -> bool:
        """Whether it still runs, as far as this machine can tell."""
        if self.pid is None or self.host != socket.gethostname():
            return True
        return process_alive(self.pid)


def _read_holder(fd: int) -> Holder | None:
    """The holder written in the lock file, if it reads."""
    try:
        data = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return Holder(int(data["pid"]), str(data["host"]))
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return None


def holder(run_dir: str) -> Holder | None:
    """Who trains in `run_dir` now; `None` when nobody does."""
    try:
        fd = os.open(os.path.join(run_dir, LOCK), os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd) or Holder(None, socket.gethostname())
        except OSError:  # a filesystem without locks: nobody can be seen
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


class RunLock:
    """The lock of one run directory, held from `acquire()` to `release()` (or a `with` block).

    Args:
        run_dir: An existing run directory.

    Raises:
        RunDirectoryBusy: from `acquire()`, when another process holds it.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Takes the lock (again a no-op); refuses while another process holds it."""
        deadline = time.monotonic() + _SETTLE_SECONDS
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                if error.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                    raise
                # Nothing can be written here, so nothing needs the lock: a finished run
                # can still be read; a write fails with its own error.
                logger.info("%s: read-only; not locked", self.run_dir)
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = _read_holder(fd)
                os.close(fd)
                if (other is not None and other.running) or time.monotonic() > deadline:
                    raise RunDirectoryBusy(
                        f"{self.run_dir}: {other or 'another process'} is training in this run "
                        "directory; wait for it to finish (or stop it), then rerun.") from None
                time.sleep(0.05)
                continue
            except OSError as error:
                os.close(fd)
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                logger.warning("%s: this filesystem has no file locks; nothing keeps a second "
                               "process from training here", self.run_dir)
                return self
            if not _same_file(fd, self.path):  # its last holder removed it meanwhile
                os.close(fd)
                continue
            left = _read_holder(fd)
            if left is not None and left.pid != os.getpid():
                logger.warning("%s: taking over the lock left by %s, which is no longer "
                               "running", self.run_dir, left)
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, record, 0)
            self._fd = fd
        return self

    def release(self) -> None:
        """Lets go of the lock and removes the lock file."""
        if self._fd is None:
            return
        try:
            os.remove(self.path)  # while still held: nobody locks a file on its way out
        except FileNotFoundError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc_info) -> None:
        self.release()


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
