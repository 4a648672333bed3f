"""Retention checkpoints: what retention dropped, so that verification continues across it.

When retention drops a partition of ``audit.events``, the chain entries of its events can no
longer be recomputed. Before the drop, a retention checkpoint records what left: the
partition and its range, how many events it held, the exact chain positions of those events
(``positions``, a PostgreSQL ``int8multirange`` in its canonical text, e.g.
``{[1,21),[41,61)}``), the last of them (``position``) and the chain's entry hash there
(``head``). It is authenticated like the seal checkpoints (HMAC-SHA256 with a key from the
environment, optionally Ed25519-signed), over::

    "audit_mw retention checkpoint v1", chain_id (or NULL), seq, partition, range_from (or
    NULL), range_to, row_count, positions, position, head (hex), last_event_id (or NULL),
    policy, created_at, key_id

The verifier then walks the whole chain as before. At a position the checkpoint lists, a
missing event is expected: the walk takes the entry hash stored in ``audit.chain`` as the
link and goes on, so every event still present (a held partition older than a dropped one
included) is recomputed and every seal checkpoint is still reached. A missing event at any
other position is still ``missing``; nobody without the key can declare a range "dropped by
policy" to hide a deletion.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit_mw.errors import VerificationError
from audit_mw.integrity.canonical import encode_fields
from audit_mw.integrity.checkpoints import append_json_lines
from audit_mw.integrity.keys import KeyRing, authenticate, authentication_problem

__all__ = [
    "Retained",
    "RetentionCheckpoint",
    "RetentionSink",
    "parse_multirange",
    "read_retention_file",
    "retained_positions",
    "retention_file_for",
]

_TAG = "audit_mw retention checkpoint v1"
_RANGE = re.compile(r"\[(-?\d+),(-?\d+)\)")


def parse_multirange(text: str) -> list[tuple[int, int]]:
    """``{[1,21),[41,61)}`` as half-open ``(lower, upper)`` pairs, in order."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"not a multirange: {text!r}")
    pairs = [(int(a), int(b)) for a, b in _RANGE.findall(body)]
    if body != "{" + ",".join(f"[{a},{b})" for a, b in pairs) + "}":
        raise ValueError(f"not a canonical int8multirange: {text!r}")
    return pairs


@dataclass(frozen=True, slots=True)
class RetentionCheckpoint:
    """One authenticated record of a partition dropped by retention."""

    seq: int
    chain_id: str | None
    partition: str
    range_from: str | None
    range_to: str
    row_count: int
    positions: str
    position: int
    head: bytes
    last_event_id: int | None
    policy: str
    created_at: str
    key_id: str
    mac: bytes = b""
    sig_key_id: str | None = None
    signature: bytes | None = None

    def message(self) -> bytes:
        """The bytes the MAC and the signature cover."""
        return encode_fields([
            _TAG, self.chain_id, str(self.seq), self.partition, self.range_from, self.range_to,
            str(self.row_count), self.positions, str(self.position), self.head.hex(),
            None if self.last_event_id is None else str(self.last_event_id), self.policy,
            self.created_at, self.key_id,
        ])

    def authenticated(self, keys: KeyRing) -> RetentionCheckpoint:
        """This record with its MAC (and signature, if a signing key is set)."""
        return authenticate(self, keys)

    def problem(self, keys: KeyRing) -> str | None:
        """Why this record fails authentication, or ``None`` when it verifies."""
        found = authentication_problem(self, keys)
        return None if found is None else f"retention checkpoint {self.seq}: {found[1]}"

    def summary(self) -> dict[str, Any]:
        """What a verification result reports about this drop."""
        return {
            "seq": self.seq, "partition": self.partition, "range_from": self.range_from,
            "range_to": self.range_to, "row_count": self.row_count, "position": self.position,
            "policy": self.policy, "created_at": self.created_at,
        }

    def to_json(self) -> dict[str, Any]:
        """One JSON object (a line of the retention file)."""
        return {
            "v": 1, "type": "retention", "seq": self.seq, "chain_id": self.chain_id,
            "partition": self.partition, "range_from": self.range_from,
            "range_to": self.range_to, "row_count": self.row_count,
            "positions": self.positions, "position": self.position,
            "head": self.head.hex(), "last_event_id": self.last_event_id,
            "policy": self.policy, "created_at": self.created_at, "key_id": self.key_id,
            "mac": self.mac.hex(), "sig_key_id": self.sig_key_id,
            "signature": None if self.signature is None else self.signature.hex(),
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RetentionCheckpoint:
        """Parse :meth:`to_json` output; raises ``ValueError`` on a malformed object."""
        if obj.get("v") != 1 or obj.get("type") != "retention":
            raise ValueError("not a version 1 retention checkpoint")
        try:
            return cls(
                seq=int(obj["seq"]),
                chain_id=None if obj["chain_id"] is None else str(obj["chain_id"]),
                partition=str(obj["partition"]),
                range_from=None if obj["range_from"] is None else str(obj["range_from"]),
                range_to=str(obj["range_to"]), row_count=int(obj["row_count"]),
                positions=str(obj["positions"]),
                position=int(obj["position"]), head=bytes.fromhex(obj["head"]),
                last_event_id=None if obj["last_event_id"] is None
                else int(obj["last_event_id"]),
                policy=str(obj["policy"]), created_at=str(obj["created_at"]),
                key_id=str(obj["key_id"]), mac=bytes.fromhex(obj["mac"]),
                sig_key_id=None if obj.get("sig_key_id") is None else str(obj["sig_key_id"]),
                signature=None if obj.get("signature") is None
                else bytes.fromhex(obj["signature"]),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed retention checkpoint: {exc}") from None


def retention_file_for(checkpoint_file: str | os.PathLike[str]) -> Path:
    """The retention file kept beside a checkpoint file: ``<file>.retention``."""
    path = Path(checkpoint_file)
    return path.with_name(path.name + ".retention")


class RetentionSink:
    """An append-only JSON-lines file of retention checkpoints, fsynced after every write."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, checkpoints: Sequence[RetentionCheckpoint]) -> None:
        append_json_lines(self.path, [c.to_json() for c in checkpoints])


def read_retention_file(path: str | os.PathLike[str]) -> list[RetentionCheckpoint]:
    """Every retention checkpoint in a retention file; an absent file holds none."""
    found = []
    try:
        with Path(path).open("rb") as f:
            for number, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    found.append(RetentionCheckpoint.from_json(json.loads(line)))
                except ValueError as exc:
                    raise VerificationError(
                        f"retention file {path}: line {number} is not a retention "
                        f"checkpoint: {exc}") from None
    except FileNotFoundError:
        return []
    return found


@dataclass(frozen=True, slots=True)
class Retained:
    """Every chain position retention dropped (merged, half-open, in order), the entry hash
    each checkpoint recorded at its last position, and the checkpoints themselves."""

    ranges: tuple[tuple[int, int], ...]
    heads: dict[int, bytes]
    checkpoints: tuple[RetentionCheckpoint, ...]

    def summary(self, bridged: int) -> dict[str, Any]:
        """What a verification result reports: the drops, and how many entries were gone."""
        latest = max(self.checkpoints, key=lambda c: c.seq)
        return {
            "checkpoints": len(self.checkpoints),
            "dropped_events": sum(c.row_count for c in self.checkpoints),
            "bridged_entries": bridged,
            "partitions": [c.partition for c in sorted(self.checkpoints, key=lambda c: c.seq)],
            "latest": latest.summary(),
        }


def retained_positions(
    records: Sequence[RetentionCheckpoint], keys: KeyRing, chain_id: str | None
) -> tuple[Retained | None, tuple[int, str] | None]:
    """The positions the verifier may find gone, or ``(position, problem)`` when a record
    does not authenticate or belongs to another chain: a forged "dropped by policy" is
    tampering, never skipped. Records from the database and the retention file may repeat.
    """
    unique: dict[int, RetentionCheckpoint] = {}
    pairs: list[tuple[int, int]] = []
    for record in records:
        try:
            ranges = parse_multirange(record.positions)
        except ValueError as exc:
            return None, (1, f"retention checkpoint {record.seq}: {exc}")
        first = ranges[0][0] if ranges else 1
        problem = record.problem(keys)
        if problem is None and record.chain_id is not None and record.chain_id != chain_id:
            problem = (f"retention checkpoint {record.seq} belongs to chain {record.chain_id}, "
                       f"the database holds {chain_id or 'no chain'}")
        seen = unique.get(record.seq)
        if problem is None and seen is not None and seen != record:
            problem = (f"retention checkpoint {record.seq} differs between the database and "
                       "the retention file")
        if problem is not None:
            return None, (first, problem)
        unique[record.seq] = record
        pairs.extend(ranges)
    if not unique:
        return None, None
    merged: list[tuple[int, int]] = []
    for lower, upper in sorted(pairs):
        if merged and lower <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], upper))
        else:
            merged.append((lower, upper))
    heads = {c.position: c.head for c in unique.values() if c.position > 0}
    return Retained(tuple(merged), heads, tuple(unique.values())), None
