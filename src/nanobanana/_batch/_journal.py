"""The journal file of a batch: JSON lines, appended, read back by key on the next run.

Writing. Each record is one ``os.write`` of one line to a file opened with
``O_APPEND``, so it is in the kernel before the call returns: a ``kill -9`` of the
process a moment later cannot lose it, nor tear it. Records that guard money (a
generation id: without it the next run would pay again) are also made durable
against a crash of the machine with ``fsync``, before anything waits on the
generation. Those syncs are grouped: one ``fsync`` in a worker thread covers every
record written before it started, so many items in flight share one disk flush and
the event loop never blocks on the disk.

One batch at a time: the file is locked (``flock``) while a batch uses it, since two
runs of the same batch at once would each pay for the items the other has not
recorded yet.

Reading. The last record of a key is the item's state. Opening the journal scans it
once and keeps, per key, only the offset of that record (a string and an integer);
the record itself is read again when its item comes up. A line torn by a crash of
the machine is skipped (its item's previous record, if any, stands), and the next
record starts on a fresh line.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

import anyio
import anyio.to_thread

__all__ = ["Journal"]

if sys.platform != "win32":
    import fcntl

_O_BINARY = getattr(os, "O_BINARY", 0)


def _lock(fd: int, path: Path) -> None:
    if sys.platform == "win32":  # pragma: no cover - no advisory locks there
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise BlockingIOError(
            errno.EWOULDBLOCK,
            f"the journal {str(path)!r} is in use by another batch; running the same "
            "batch twice at once would pay twice for the items not recorded yet",
        ) from None


def _fsync_directory(path: Path) -> None:
    """Make a new file's name durable too (POSIX: fsync the directory)."""
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse it; nothing to do
        pass
    finally:
        os.close(fd)


def _scan(reader: IO[bytes]) -> tuple[dict[str, int], bool]:
    """The offset of each key's last record, and whether the file ends mid-line."""
    index: dict[str, int] = {}
    offset = 0
    line = b""
    for line in reader:
        start = offset
        offset += len(line)
        if not line.endswith(b"\n"):
            break  # torn by a crash: not a record
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("key"), str):
            index[record["key"]] = start
    return index, bool(line) and not line.endswith(b"\n")


class Journal:
    """An open journal: the index of what earlier runs recorded, and the append end.

    Open it with ``await Journal.open(path)`` and close it with ``await aclose()``.
    """

    def __init__(self, path: Path, fd: int, reader: IO[bytes], index: dict[str, int]) -> None:
        self.path = path
        self._fd: int | None = fd
        self._reader = reader
        self._index = index
        self._written = 0  # records written so far
        self._synced = 0  # of those, how many are known to be on disk
        self._syncing: anyio.Event | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str]) -> Journal:
        """Lock ``path`` (created if missing) and read the index of its records.

        Raises:
            BlockingIOError: another batch has the journal open.
            OSError: the file cannot be opened, read or written.
        """
        return await anyio.to_thread.run_sync(cls._open, Path(path))

    @classmethod
    def _open(cls, path: Path) -> Journal:
        existed = path.exists()
        flags = os.O_RDWR | os.O_CREAT | os.O_APPEND | _O_BINARY | getattr(os, "O_CLOEXEC", 0)
        fd = os.open(path, flags, 0o644)
        reader: IO[bytes] | None = None
        try:
            _lock(fd, path)
            reader = open(path, "rb")  # noqa: PTH123, SIM115 - kept open to read records back
            index, torn = _scan(reader)
            if torn:  # the last run died mid-line: start the next record on a fresh one
                os.write(fd, b"\n")
            if not existed:
                _fsync_directory(path)
        except BaseException:
            if reader is not None:
                reader.close()
            os.close(fd)
            raise
        return cls(path, fd, reader, index)

    def __len__(self) -> int:
        """How many keys of earlier runs have not been looked up yet."""
        return len(self._index)

    def take(self, key: str) -> dict[str, Any] | None:
        """The last record of ``key`` from earlier runs (each key is taken once)."""
        offset = self._index.pop(key, None)
        if offset is None:
            return None
        self._reader.seek(offset)
        record = json.loads(self._reader.readline())
        return record if isinstance(record, dict) else None

    def write(self, record: dict[str, Any]) -> None:
        """Append one record; it is in the kernel (safe from ``kill -9``) on return."""
        if self._fd is None:
            raise RuntimeError("the journal is closed")
        line = json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n"
        os.write(self._fd, line.encode())
        self._written += 1

    async def sync(self) -> None:
        """Wait until every record written so far is on disk (one grouped ``fsync``)."""
        target = self._written
        while self._synced < target:
            if self._syncing is not None:
                await self._syncing.wait()  # an fsync under way; then check again
                continue
            fd = self._fd
            if fd is None:
                raise RuntimeError("the journal is closed")
            event = self._syncing = anyio.Event()
            upto = self._written
            try:
                # Not cancellable (the thread runs to the end), so the count stays true.
                await anyio.to_thread.run_sync(os.fsync, fd)
                self._synced = max(self._synced, upto)
            finally:
                self._syncing = None
                event.set()

    async def aclose(self) -> None:
        """Put what is left on disk, close the file and release the lock (idempotent)."""
        if self._fd is None:
            return
        try:
            with anyio.CancelScope(shield=True):
                await self.sync()
        finally:
            fd, self._fd = self._fd, None
            self._reader.close()
            with contextlib.suppress(OSError):
                os.close(fd)
