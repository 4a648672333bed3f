"""A durable local spool for application events the database could not take.

The spool is one append-only file of JSON lines (one event per line, already redacted: no
secret ever reaches the disk). Each append is written under an exclusive ``flock`` and
``fsync``-ed before the call returns, so an event the application was told is spooled
survives a crash of the process or of the machine. Several processes may share one spool.

Replay (``audit-mw replay``, or automatically after the next successful write) takes a
separate replay lock, reads the lines present at that moment, stores them (the database
ignores an event id it already has, so a replay that is interrupted and run again stores
nothing twice), then rewrites the file without the lines that were stored, keeping anything
appended meanwhile. The rewrite goes to a temporary file that replaces the spool atomically;
appenders check after locking that they still hold the current file.

A line that cannot be parsed (a write torn by a crash) is moved to ``<spool>.rejected`` and
reported, never dropped silently. POSIX only (``fcntl.flock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = ["Spool", "SpoolBatch"]

_APPEND_ATTEMPTS = 100


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


@dataclass
class SpoolBatch:
    """The lines a replay read; mark each one :meth:`stored` or :meth:`rejected`."""

    lines: list[str]
    end: int
    torn: list[str] = field(default_factory=list)
    _stored: set[int] = field(default_factory=set)
    _rejected: dict[int, str] = field(default_factory=dict)
    _reasons: dict[int, str] = field(default_factory=dict)

    def stored(self, index: int) -> None:
        """Line ``index`` is in the database: drop it from the spool."""
        self._stored.add(index)

    def rejected(self, index: int, reason: str | None = None) -> None:
        """Line ``index`` can never be stored: move it to the ``.rejected`` file.

        Without ``reason`` (a line that cannot be read) the line is moved as it is; with
        one (a record the database refuses) the ``.rejected`` file gets a JSON line
        ``{"rejected": REASON, "at": TIME, "line": LINE}``.
        """
        self._rejected[index] = self.lines[index]
        if reason is not None:
            self._reasons[index] = reason

    @property
    def pending(self) -> int:
        """How many lines stay in the spool after this replay."""
        return len(self.lines) - len(self._stored) - len(self._rejected)


class Spool:
    """A durable JSON-lines spool at ``path`` (created on first append, mode 0600)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().absolute()
        self.rejected_path = self.path.with_name(self.path.name + ".rejected")
        self._lock_path = self.path.with_name(self.path.name + ".lock")

    def __repr__(self) -> str:
        return f"Spool({str(self.path)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Spool) and other.path == self.path

    def __hash__(self) -> int:
        return hash(self.path)

    def has_pending(self) -> bool:
        """Whether the spool holds anything (one ``stat``; cheap enough for every write)."""
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, line: str) -> None:
        """Append one line and ``fsync`` it; raise OSError when that is not possible."""
        if "\n" in line or "\r" in line:
            raise ValueError("a spool line must not contain a line break")
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        payload = (line + "\n").encode("utf-8")
        for _ in range(_APPEND_ATTEMPTS):
            existed = self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if not _same_file(fd, self.path):
                    continue  # a replay replaced the file between our open and our lock
                size = os.fstat(fd).st_size
                data = payload
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A torn last line (crash mid-write): keep ours on a line of its own.
                    data = b"\n" + payload
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if not existed:
                _fsync_dir(self.path.parent)
            return
        raise OSError(f"could not append to the audit spool {self.path}: it keeps being replaced")

    def read_all(self) -> list[str]:
        """Every complete line in the spool now (for inspection and tests)."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        return [line.decode("utf-8", "replace") for line in data.split(b"\n")[:-1] if line]

    @contextlib.contextmanager
    def replaying(self, *, wait: bool = True) -> Iterator[SpoolBatch | None]:
        """Hold the replay lock and yield the spooled lines, or ``None`` when another
        replay holds the lock and ``wait`` is false.

        On exit (also on an exception) the spool is rewritten without the lines marked
        stored or rejected; rejected and torn lines are appended to :attr:`rejected_path`.
        """
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield None
                return
            batch = self._read()
            try:
                yield batch
            finally:
                self._compact(batch)
        finally:
            os.close(lock_fd)

    def _read(self) -> SpoolBatch:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return SpoolBatch(lines=[], end=0)
        try:
            # Appenders hold the lock while they write, so what we read is whole lines,
            # except a line torn by a crash.
            fcntl.flock(fd, fcntl.LOCK_SH)
            size = os.fstat(fd).st_size
            data = os.pread(fd, size, 0) if size else b""
        finally:
            os.close(fd)
        pieces = data.split(b"\n")
        lines, torn = [], []
        for piece in pieces[:-1]:
            if piece.strip():
                lines.append(piece.decode("utf-8", "replace"))
        if pieces[-1].strip():
            torn.append(pieces[-1].decode("utf-8", "replace"))
        return SpoolBatch(lines=lines, end=len(data), torn=torn)

    def _compact(self, batch: SpoolBatch) -> None:
        if not batch._stored and not batch._rejected and not batch.torn:
            return
        at = datetime.now(UTC).isoformat(timespec="seconds")
        to_reject = [
            line if i not in batch._reasons else json.dumps(
                {"rejected": batch._reasons[i], "at": at, "line": line}, ensure_ascii=True)
            for i, line in batch._rejected.items()]
        to_reject += batch.torn
        if to_reject:
            fd = os.open(self.rejected_path,
                         os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, "".join(f"{line}\n" for line in to_reject).encode("utf-8"))
                os.fsync(fd)
            finally:
                os.close(fd)
        remaining = [line for i, line in enumerate(batch.lines)
                     if i not in batch._stored and i not in batch._rejected]
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            tail = os.pread(fd, size - batch.end, batch.end) if size > batch.end else b""
            if not remaining and not tail.strip():
                os.ftruncate(fd, 0)
                os.fsync(fd)
                return
            content = "".join(f"{line}\n" for line in remaining).encode("utf-8") + tail
            temporary = self.path.with_name(self.path.name + ".tmp")
            tmp_fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                             0o600)
            try:
                _write_all(tmp_fd, content)
                os.fsync(tmp_fd)
            finally:
                os.close(tmp_fd)
            os.replace(temporary, self.path)
            _fsync_dir(self.path.parent)
        finally:
            os.close(fd)
