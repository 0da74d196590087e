"""Files written whole or not at all: a reader never sees half of one.

Every file the package writes goes through here. Each write goes to a
hidden temporary file beside the target (named after the target and the
process, so that processes writing the same file do not collide), is flushed
to disk, and is renamed over the target. Folders written whole (a backup
generation, an export) are written into a `staging_dir` and renamed. A write
that fails removes its temporary file or folder; one whose process died is
removed by `remove_abandoned_staging` the next time its directory is written.

A full disk is found before a large write where its size is known
(`check_room`), and reported in one line that names the directory
(`reporting_full_disk`).

Examples:

>>> import json, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "metrics.json")
>>> write_json(path, {"accuracy": 0.5})
>>> json.load(open(path))
{'accuracy': 0.5}
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
from typing import Any, Iterator

# `.tmp-<tag>-<pid>-<rest>`: what `writing` and `staging_dir` write to before a rename.
_STAGING = re.compile(r"^\.tmp-.+-(?P<pid>\d+)-[^-]*$")
# The errors of a write that found no room (full disk, quota, file size limit).
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


@contextlib.contextmanager
def writing(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[str]:
    """Yields a temporary path to write `path`'s content to; it becomes `path` on success.

    The temporary file is flushed to disk and renamed over `path` when the
    block ends normally, and removed when it raises.

    Args:
        path: The file to write.
        suffix: The temporary file's ending, for writers that check it
            (Keras' `model.save` wants `.keras`).

    Examples:

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
    >>> with writing(path) as tmp:
    ...     _ = open(tmp, "w").write("done")
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('done', ['notes.txt'])
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".tmp-{name}-{os.getpid()}-w{suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` atomically."""
    with writing(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` as UTF-8, atomically (line endings as given)."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Writes `data` as indented, key-sorted JSON to `path` atomically."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (staging folders name their writer)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(directory: str, tag: str) -> str:
    """A new folder `<directory>/.tmp-<tag>-<pid>-...` to write into before a rename."""
    import tempfile

    return tempfile.mkdtemp(prefix=f".tmp-{tag}-{os.getpid()}-", dir=directory)


def remove_abandoned_staging(directory: str) -> None:
    """Removes the temporary files and `staging_dir` folders of writers that died mid-write.

    Examples:

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> open(os.path.join(folder, ".tmp-model.keras-999999999-w.keras"), "w").close()
    >>> remove_abandoned_staging(folder)
    >>> os.listdir(folder)
    []
    """
    for name in os.listdir(directory):
        match = _STAGING.match(name)
        if not match:
            continue
        pid = int(match["pid"])
        if pid != os.getpid() and process_alive(pid):
            continue
        path = os.path.join(directory, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer may still use on `directory`'s filesystem."""
    stats = os.statvfs(directory)
    return stats.f_bavail * stats.f_frsize


def size_text(num_bytes: float) -> str:
    """`num_bytes` for a person.

    Examples:

    >>> size_text(512), size_text(1536), size_text(3.2e9)
    ('512 B', '1.5 KB', '3.0 GB')
    """
    for unit in ("B", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def check_room(directory: str, needed: int, what: str, then: str) -> None:
    """Raises an `OSError` (ENOSPC) naming `directory` when it has less than `needed` bytes free.

    Args:
        directory: Where the write goes.
        needed: Its estimated size in bytes.
        what: What is written, e.g. "the backup of epoch 3".
        then: What a rerun does once there is room, e.g. "rerun the same
            command: it resumes from the last backup".

    Examples:

    >>> import tempfile
    >>> check_room(tempfile.gettempdir(), 1, "a note", "rerun")
    >>> check_room(tempfile.gettempdir(), 1 << 62, "a note", "rerun")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    OSError: [Errno 28] no room for a note (needs about 4294967296.0 GB, ... free); free some space there and rerun: ...
    """
    free = free_bytes(directory)
    if free < needed:
        raise OSError(errno.ENOSPC, f"no room for {what} (needs about {size_text(needed)}, "
                      f"{size_text(free)} free); free some space there and {then}", directory)


@contextlib.contextmanager
def reporting_full_disk(directory: str, what: str, then: str) -> Iterator[None]:
    """Turns a write that found no room into one `OSError` naming `directory` and what to do.

    No room is a full disk, a full quota, or a file size limit (`ulimit -f`);
    other errors pass unchanged.

    Examples:

    >>> with reporting_full_disk("runs/mine", "model.keras", "rerun"):
    ...     raise OSError(errno.ENOSPC, "No space left on device")
    Traceback (most recent call last):
    OSError: [Errno 28] could not write model.keras (No space left on device); free some space there and rerun: 'runs/mine'
    """
    try:
        yield
    except OSError as error:
        if error.errno not in NO_ROOM:
            raise
        fix = ("raise the file size limit (ulimit -f)" if error.errno == errno.EFBIG
               else "free some space there")
        raise OSError(error.errno, f"could not write {what} ({os.strerror(error.errno)}); "
                      f"{fix} and {then}", directory) from error
