"""Files written whole or not at all: a reader never sees half of one.

Every file the package writes goes through here. Each write goes to a
temporary file beside the target (named after the process, so that processes
writing the same file do not collide), is flushed to disk, and is renamed
over the target. Folders written whole (a backup generation, an export) are
written into a `staging_dir` and renamed.

Examples:

>>> import json, os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "metrics.json")
>>> write_json(path, {"accuracy": 0.5})
>>> json.load(open(path))
{'accuracy': 0.5}
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Any, Iterator


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
    >>> open(path).read()
    'done'
    """
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}{suffix}"
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
    """Removes `staging_dir` folders whose writing process is gone (it died mid-write)."""
    import shutil

    for name in os.listdir(directory):
        parts = name.split("-")
        if not name.startswith(".tmp-") or len(parts) < 4 or not parts[2].isdigit():
            continue
        pid = int(parts[2])
        if pid != os.getpid() and process_alive(pid):
            continue
        shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
