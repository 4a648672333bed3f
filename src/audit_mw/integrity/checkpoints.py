"""Checkpoints: authenticated chain heads, and the sinks that keep copies outside the database.

A checkpoint says "chain ``chain_id`` had ``position`` entries, the last ``count`` added by
seal number ``seq``, and its head was ``head``", authenticated with HMAC-SHA256 under a key
from the environment and optionally signed with Ed25519. Its message (the bytes the MAC and
the signature cover) uses the same length-prefixed fields as entries::

    "audit_mw checkpoint v1", chain_id, seq, position, count, head (hex),
    last_event_id (or NULL), created_at, key_id

Sinks: :class:`JsonlSink` appends one JSON object per line to a file and fsyncs it;
:class:`StructlogSink` logs each checkpoint. A copy outside the database is what lets
``verify`` see a truncated tail or a restored older backup.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import structlog

from audit_mw.errors import VerificationError
from audit_mw.integrity.canonical import encode_fields
from audit_mw.integrity.keys import KeyRing, authenticate, authentication_problem

__all__ = [
    "Checkpoint",
    "CheckpointSink",
    "JsonlSink",
    "StructlogSink",
    "read_checkpoint_file",
]

_TAG = "audit_mw checkpoint v1"


def utc_text(moment: dt.datetime) -> str:
    """A timestamp as checkpoints carry it: UTC, microseconds, ``Z``."""
    utc = moment.astimezone(dt.UTC)
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond:06d}Z"


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """One authenticated chain head."""

    seq: int
    chain_id: str
    position: int
    count: int
    head: bytes
    last_event_id: int | None
    created_at: str
    key_id: str
    mac: bytes = b""
    sig_key_id: str | None = None
    signature: bytes | None = None

    @property
    def first_position(self) -> int:
        """The first chain position this checkpoint's seal added."""
        return self.position - self.count + 1

    def message(self) -> bytes:
        """The bytes the MAC and the signature cover."""
        return encode_fields([
            _TAG, self.chain_id, str(self.seq), str(self.position), str(self.count),
            self.head.hex(), None if self.last_event_id is None else str(self.last_event_id),
            self.created_at, self.key_id,
        ])

    def authenticated(self, keys: KeyRing) -> Checkpoint:
        """This checkpoint with its MAC (and signature, if a signing key is set)."""
        return authenticate(self, keys)

    def problem(self, keys: KeyRing) -> tuple[str, str] | None:
        """``(kind, detail)`` if this checkpoint fails authentication, else ``None``.

        With HMAC keys the MAC must verify; with public keys the signature must too. A key
        id that is not configured is ``unknown_key``: never accepted.
        """
        found = authentication_problem(self, keys)
        return None if found is None else (found[0], f"checkpoint {self.seq}: {found[1]}")

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as one JSON object (the checkpoint file's line format)."""
        return {
            "v": 1, "seq": self.seq, "chain_id": self.chain_id, "position": self.position,
            "count": self.count, "head": self.head.hex(), "last_event_id": self.last_event_id,
            "created_at": self.created_at, "key_id": self.key_id, "mac": self.mac.hex(),
            "sig_key_id": self.sig_key_id,
            "signature": None if self.signature is None else self.signature.hex(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Checkpoint:
        """Parse :meth:`to_json` output; raises ``ValueError`` on a malformed object."""
        if obj.get("v") != 1:
            raise ValueError(f"unsupported checkpoint version {obj.get('v')!r}")
        try:
            return cls(
                seq=int(obj["seq"]), chain_id=str(obj["chain_id"]),
                position=int(obj["position"]), count=int(obj["count"]),
                head=bytes.fromhex(obj["head"]),
                last_event_id=None if obj["last_event_id"] is None else int(obj["last_event_id"]),
                created_at=str(obj["created_at"]), key_id=str(obj["key_id"]),
                mac=bytes.fromhex(obj["mac"]),
                sig_key_id=None if obj.get("sig_key_id") is None else str(obj["sig_key_id"]),
                signature=None if obj.get("signature") is None
                else bytes.fromhex(obj["signature"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed checkpoint: {exc}") from None


class CheckpointSink(Protocol):
    """Where the sealer writes copies of new checkpoints, after they are committed."""

    def write(self, checkpoints: Sequence[Checkpoint]) -> None: ...


def append_json_lines(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append one compact JSON object per line to ``path``, then fsync before returning."""
    if not records:
        return
    data = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records).encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


class JsonlSink:
    """An append-only JSON-lines file, flushed and fsynced after every write.

    :meth:`last` reads the newest line from the end of the file, so the sealer can copy
    checkpoints that a crash kept from being written, and refuse to seal when the file is
    ahead of the database (a restored backup).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, checkpoints: Sequence[Checkpoint]) -> None:
        append_json_lines(self.path, [c.to_json() for c in checkpoints])

    def last(self) -> Checkpoint | None:
        """The newest checkpoint in the file, or ``None`` for a missing or empty file."""
        try:
            with self.path.open("rb") as f:
                f.seek(0, os.SEEK_END)
                end = f.tell()
                chunk = b""
                pos = end
                while pos > 0:
                    step = min(65536, pos)
                    pos -= step
                    f.seek(pos)
                    chunk = f.read(step) + chunk
                    lines = chunk.rstrip(b"\n").split(b"\n")
                    if len(lines) > 1 or pos == 0:
                        line = lines[-1].strip()
                        return _parse_line(line, self.path, -1) if line else None
        except FileNotFoundError:
            return None
        return None


class StructlogSink:
    """Logs every checkpoint as one structured ``audit_checkpoint`` event (no key material)."""

    def __init__(self, logger: Any = None) -> None:
        self.logger = logger if logger is not None else structlog.get_logger("audit_mw.integrity")

    def write(self, checkpoints: Sequence[Checkpoint]) -> None:
        for c in checkpoints:
            self.logger.info("audit_checkpoint", **c.to_json())


def _parse_line(line: bytes, path: Path, number: int) -> Checkpoint:
    try:
        return Checkpoint.from_json(json.loads(line))
    except ValueError as exc:
        where = "last line" if number < 0 else f"line {number}"
        raise VerificationError(
            f"checkpoint file {path}: {where} is not a checkpoint: {exc}") from None


def read_checkpoint_file(path: str | os.PathLike[str]) -> list[Checkpoint]:
    """Every checkpoint in a JSON-lines checkpoint file, in file order."""
    try:
        with Path(path).open("rb") as f:
            return list(_iter_lines(f, Path(path)))
    except FileNotFoundError:
        raise VerificationError(f"checkpoint file {path} does not exist") from None


def _iter_lines(f: Any, path: Path) -> Iterator[Checkpoint]:
    for number, line in enumerate(f, start=1):
        if line.strip():
            yield _parse_line(line, path, number)
