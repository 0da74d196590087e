"""The teacher's output file: locked, resumable, each id once, nothing received held back.

One JSON line per finished input. The guarantees:

- **The lock comes first.** `<output>.lock` is locked (`flock`) before the
  output is read or changed in any way, torn-line repair included; a second
  process is refused with the first one's pid, and a lock left by a dead
  process is free (the kernel drops it with the process).
- **Nothing received is held back.** Each record is written with one
  `write` the moment its completion arrives, whatever order the completions
  finish in, so a kill loses nothing that was received; the file is synced
  to the device at least once a second while records arrive, and at the end.
- **Each id once.** A rerun reads the output first and skips the ids there;
  a torn last line (no newline, or not JSON: a crash mid-write) is cut off
  and redone; a different model or prompt version is refused.
- **Whole or not at all.** Reordering into input order at the end of a run
  and dropping records for `--retry-failed` rewrite the file to a temporary
  file beside it and rename it over the output, under the lock.
- A write that fails (a full disk) is cut back to the last whole line and
  raised as an `OSError` that names the output and what to do.

Examples:

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "teacher.jsonl")
>>> with OutputFile(path, "m", ["v1"]) as output:
...     output.append({"id": "b", "teacher": {"model": "m", "prompt_version": "v1"}})
...     output.append({"id": "a", "teacher": {"model": "m", "prompt_version": "v1"}})
...     output.finish(["a", "b"])
>>> [line[:9] for line in open(path)]
['{"id": "a', '{"id": "b']
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Collection, Iterable, Sequence

from dss_keras.data.records import RecordError

logger = logging.getLogger(__name__)

SYNC_INTERVAL = 1.0
"""Seconds between syncs of the output to the device while records arrive."""


class OutputLockedError(RuntimeError):
    """Another process writes to the output."""


def lock_path(path: str) -> str:
    """The lock file of an output: `<output>.lock` (kept; only its lock matters)."""
    return f"{path}.lock"


def _lock(path: str) -> int | None:
    """Locks `path`'s lock file; returns its descriptor (`None` where there is no `flock`)."""
    try:
        import fcntl
    except ImportError:  # not on POSIX: no lock
        return None
    fd = os.open(lock_path(path), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise OutputLockedError(
            f"{path}: another extraction (pid {holder}) is writing to this output; wait for "
            "it to finish or stop it, then rerun.") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


@dataclasses.dataclass
class Entry:
    """Where one record lies in the output, and its status."""

    offset: int
    length: int
    status: str | None


def scan(path: str, model: str | None = None,
         versions: Collection[str] = ()) -> tuple[dict[str, Entry], int]:
    """`({id: Entry}, end of the last whole line)` of an output, without changing it.

    Raises:
        RecordError: a line that is not JSON before the last one.
        ValueError: a record written with another model or prompt version
            (when `model` is given).
    """
    entries: dict[str, Entry] = {}
    end = 0
    if not os.path.exists(path):
        return entries, end
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                record = json.loads(raw) if raw.strip() else None
            except (json.JSONDecodeError, UnicodeDecodeError):
                record = raw
            if not raw.endswith(b"\n") or isinstance(record, bytes):
                if f.read(1):
                    raise RecordError(path, number, None, "invalid JSON in a teacher file; "
                                      "only a torn last line is repaired")
                break  # the last line, torn by a crash
            if isinstance(record, dict):
                teacher = record.get("teacher") or {}
                if model is not None:
                    _check_same_prompt(path, number, teacher, model, versions)
                entries[str(record.get("id"))] = Entry(end, len(raw), teacher.get("status"))
            end += len(raw)
    return entries, end


def _check_same_prompt(path, number, teacher, model, versions) -> None:
    written = teacher.get("model"), teacher.get("prompt_version")
    for key, value, expected in (("model", written[0], [model]),
                                 ("prompt_version", written[1], versions)):
        if value not in expected:
            raise ValueError(
                f"{path}:{number}: written with {key} {value!r}, but this run uses "
                f"{expected[0]!r}. Write to another output file, or use the same model and "
                "prompt to resume.")


class OutputFile:
    """The output of one extraction run; use it as a context manager.

    Args:
        path: The output JSONL; an existing one is resumed.
        model: The teacher model; records of another model are refused.
        versions: The prompt versions this run accepts (its own first, then
            older names of the same prompt).

    Attributes:
        entries: `{id: Entry}` of the records in the file.
    """

    def __init__(self, path: str, model: str, versions: Sequence[str]):
        self.path = path
        self._lock = _lock(path)
        self._fd = None
        try:
            self.entries, end = scan(path, model, list(versions))
            if os.path.exists(path) and end < os.path.getsize(path):
                logger.warning("%s: cutting off a torn last line (%d bytes); it is redone.",
                               path, os.path.getsize(path) - end)
                os.truncate(path, end)
            self._open(end)
        except BaseException:
            self.close()
            raise

    def _open(self, size: int) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._size = size
        self._synced = time.monotonic()

    def __enter__(self) -> "OutputFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def append(self, record: dict) -> None:
        """Writes one record now; raises if its id is already in the file."""
        key = str(record["id"])
        if key in self.entries:
            raise RuntimeError(f"id {key!r} is already in {self.path}")
        data = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as e:
            self._cut_back()
            raise _write_error(e, self.path) from None
        status = (record.get("teacher") or {}).get("status")
        self.entries[key] = Entry(self._size, len(data), status)
        self._size += len(data)
        if time.monotonic() - self._synced >= SYNC_INTERVAL:
            self.sync()

    def _cut_back(self) -> None:
        """Cuts a partly written line off, so that the file ends with a whole line."""
        try:
            os.ftruncate(self._fd, self._size)
        except OSError as e:
            logger.warning("%s: could not cut a partly written line (%s); the next run cuts it.",
                           self.path, e.strerror)

    def sync(self) -> None:
        os.fsync(self._fd)
        self._synced = time.monotonic()

    def drop(self, ids: Iterable[str]) -> None:
        """Removes the records of `ids` (to ask again), rewriting the file atomically."""
        gone = set(ids)
        self._rewrite([key for key in self._file_order() if key not in gone])

    def finish(self, order: Sequence[str]) -> None:
        """Puts the records in `order` (ids not in it keep theirs, after it); syncs the file."""
        position = {key: i for i, key in enumerate(order)}
        current = self._file_order()
        wanted = sorted(current, key=lambda key: position.get(key, len(position)))
        if wanted != current:
            self._rewrite(wanted)
        self.sync()

    def _file_order(self) -> list[str]:
        return sorted(self.entries, key=lambda key: self.entries[key].offset)

    def _rewrite(self, keys: list[str]) -> None:
        tmp = f"{self.path}.{os.getpid()}.tmp"
        entries, offset = {}, 0
        try:
            with open(self.path, "rb") as source, open(tmp, "wb") as target:
                for key in keys:
                    entry = self.entries[key]
                    source.seek(entry.offset)
                    target.write(source.read(entry.length))
                    entries[key] = Entry(offset, entry.length, entry.status)
                    offset += entry.length
                target.flush()
                os.fsync(target.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise _write_error(e, self.path) from None
        os.close(self._fd)
        self.entries = entries
        self._open(offset)

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                logger.warning("%s: sync failed: %s", self.path, e.strerror)
            os.close(self._fd)
            self._fd = None
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _write_error(error: OSError, path: str) -> OSError:
    """An `OSError` naming the output and what to do; what was written stays."""
    reason = error.strerror or str(error)
    return OSError(error.errno, f"{reason} while writing teacher records; free space (or fix "
                   "the cause) and rerun: what is written stays, the rest is redone", path)
