"""Retention checkpoints: where verification continues after old partitions were dropped.

When retention drops a partition of ``audit.events``, the chain entries of its events can no
longer be recomputed. Before the drop, a retention checkpoint records what left and where the
chain stood: the partition and its range, how many events it held, the chain position that
verification continues after (``position``, the last position of any dropped event), the
entry hash there (``head``), and ``seal_seq``, the last seal checkpoint at or before that
position. It is authenticated like the seal checkpoints (HMAC-SHA256 with a key from the
environment, optionally Ed25519-signed), over::

    "audit_mw retention checkpoint v1", chain_id (or NULL), seq, partition, range_from (or
    NULL), range_to, row_count, position, head (hex), last_event_id (or NULL), seal_seq,
    kept_before_cut, policy, created_at, key_id

so nobody without the key can declare a range "dropped by policy" to hide a deletion. Events
of kept partitions that were sealed before the cut (``kept_before_cut``: a transaction that
straddled a month boundary, or rows written with an older time) stay in the database but lie
before where verification starts; the count says how many.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from audit_mw.errors import IntegrityError
from audit_mw.integrity.canonical import encode_fields
from audit_mw.integrity.checkpoints import Checkpoint
from audit_mw.integrity.keys import KeyRing

__all__ = [
    "RetentionCheckpoint",
    "RetentionSink",
    "latest_retention_cut",
    "read_retention_file",
    "retention_file_for",
]

_TAG = "audit_mw retention checkpoint v1"


@dataclass(frozen=True, slots=True)
class RetentionCheckpoint:
    """One authenticated record of a partition dropped by retention."""

    seq: int
    chain_id: str | None
    partition: str
    range_from: str | None
    range_to: str
    row_count: int
    position: int
    head: bytes
    last_event_id: int | None
    seal_seq: int
    kept_before_cut: int
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
            str(self.row_count), str(self.position), self.head.hex(),
            None if self.last_event_id is None else str(self.last_event_id),
            str(self.seal_seq), str(self.kept_before_cut), self.policy, self.created_at,
            self.key_id,
        ])

    def authenticated(self, keys: KeyRing) -> RetentionCheckpoint:
        """This record with its MAC (and signature, if a signing key is set)."""
        kid, _ = keys.require_sealing_key()
        unsigned = replace(self, key_id=kid)
        message = unsigned.message()
        mac = keys.mac(kid, message)
        assert mac is not None  # require_sealing_key guarantees the key  # noqa: S101
        signed = keys.sign(message)
        return replace(unsigned, mac=mac, sig_key_id=signed[0] if signed else None,
                       signature=signed[1] if signed else None)

    def problem(self, keys: KeyRing) -> str | None:
        """Why this record fails authentication, or ``None`` when it verifies."""
        message = self.message()
        if keys.hmac_keys:
            expected = keys.mac(self.key_id, message)
            if expected is None:
                return f"retention checkpoint {self.seq}: unknown HMAC key id {self.key_id!r}"
            if not hmac.compare_digest(expected, self.mac):
                return f"retention checkpoint {self.seq}: HMAC does not match"
        if keys.public_keys:
            if self.signature is None or self.sig_key_id is None:
                return f"retention checkpoint {self.seq}: not signed"
            good = keys.check_signature(self.sig_key_id, message, self.signature)
            if not good:
                return f"retention checkpoint {self.seq}: signature is invalid or its key unknown"
        return None

    def as_start(self) -> Checkpoint:
        """The trusted point the chain verifier begins after (see ``Verifier(start=)``)."""
        return Checkpoint(
            seq=self.seal_seq, chain_id=self.chain_id or "", position=self.position, count=0,
            head=self.head, last_event_id=self.last_event_id, created_at=self.created_at,
            key_id=self.key_id)

    def summary(self) -> dict[str, Any]:
        """What a verification result reports about the cut."""
        return {
            "seq": self.seq, "partition": self.partition, "range_from": self.range_from,
            "range_to": self.range_to, "row_count": self.row_count, "position": self.position,
            "policy": self.policy, "created_at": self.created_at,
            "kept_before_cut": self.kept_before_cut,
        }

    def to_json(self) -> dict[str, Any]:
        """One JSON object (a line of the retention file)."""
        return {
            "v": 1, "type": "retention", "seq": self.seq, "chain_id": self.chain_id,
            "partition": self.partition, "range_from": self.range_from,
            "range_to": self.range_to, "row_count": self.row_count, "position": self.position,
            "head": self.head.hex(), "last_event_id": self.last_event_id,
            "seal_seq": self.seal_seq, "kept_before_cut": self.kept_before_cut,
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
                position=int(obj["position"]), head=bytes.fromhex(obj["head"]),
                last_event_id=None if obj["last_event_id"] is None
                else int(obj["last_event_id"]),
                seal_seq=int(obj["seal_seq"]), kept_before_cut=int(obj["kept_before_cut"]),
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
        if not checkpoints:
            return
        data = "".join(json.dumps(c.to_json(), separators=(",", ":")) + "\n"
                       for c in checkpoints).encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)


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
                    raise IntegrityError(
                        f"retention file {path}: line {number} is not a retention "
                        f"checkpoint: {exc}") from None
    except FileNotFoundError:
        return []
    return found


def latest_retention_cut(
    records: Sequence[RetentionCheckpoint], keys: KeyRing, chain_id: str | None
) -> tuple[RetentionCheckpoint | None, str | None]:
    """The authentic record verification starts after (the furthest cut), or the problem.

    Every record must authenticate and belong to ``chain_id``: a record that does not is
    reported (a forged "dropped by policy" is tampering), never skipped.
    """
    best: RetentionCheckpoint | None = None
    for record in records:
        problem = record.problem(keys)
        if problem is None and record.chain_id is not None and record.chain_id != chain_id:
            problem = (f"retention checkpoint {record.seq} belongs to chain {record.chain_id}, "
                       f"the database holds {chain_id or 'no chain'}")
        if problem is not None:
            return None, problem
        if best is None or (record.position, record.seq) > (best.position, best.seq):
            best = record
    return best, None
