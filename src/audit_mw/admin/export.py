"""Exports of the trail for a date range, linked to the integrity chain.

An export is one file an auditor can check without database access (``docs/admin.md``
describes it field by field):

- **NDJSON** (``application/x-ndjson``): a header line
  ``{"audit_mw_export":3,"format":"ndjson","from":...,"to":...,"columns":[...]}``, then one
  event per line (every column of ``audit.events``, as PostgreSQL's ``row_to_json`` prints
  it, timestamps in UTC, followed by the chain columns), then ``{"manifest":{...}}``.
- **CSV** (``text/csv``): a header row of column names, one row per event, then the row
  ``#manifest,<manifest JSON>``. Cells follow PostgreSQL's ``COPY ... CSV``: an SQL NULL is
  an empty unquoted cell, every value is quoted; ``jsonb`` and arrays as PostgreSQL prints
  ``jsonb``. A cell a spreadsheet would run as a formula (or that starts with ``'``) gets a
  leading ``'``.

Events come in chain order: the sealed ones first, in chain position order, each with its
position, content hash and entry hash; then the events not sealed yet (their chain columns
are null). The manifest says what was exported (range, counts, first and last entry), gives
the SHA-256 of every byte before it, the chain id, the checkpoint that covers the last
exported position (as stored: HMAC and, when configured, Ed25519 signature), the entry hash
before the first exported position and the *links* (position, event id, content hash of
every chain entry in between whose event is outside the range, and of those up to the
checkpoint), and an Ed25519 signature by the export key over its own canonical JSON (or,
made with an HMAC :class:`ExportKey`, an HMAC-SHA256). :func:`verify_export`
(in :mod:`audit_mw.admin.export_verify`) checks all of it.

:class:`ExportWriter` is the pure core (rows in, bytes out); :func:`astream_export` (async,
for the HTTP route) and :func:`write_export` (sync, for the CLI) only move rows to it,
through ``_export_async`` and its generated twin ``_export_sync``.
Memory holds one batch of rows, plus the links (at most a checkpoint's worth of entries
beyond the range, and the out-of-range entries interleaved with it).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import AsyncGenerator, Mapping, Sequence
from contextlib import aclosing, closing
from datetime import UTC, datetime
from typing import Any, BinaryIO, Final

import psycopg
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import _export_async, _export_sync
from audit_mw.admin._export_format import (
    CHAIN_COLUMNS,
    CSV_MANIFEST,
    FORMAT_VERSION,
    ExportChain,
    ExportKey,
    ExportSigningKey,
    ExportStats,
    MerkleRoot,
    csv_row,
    csv_value,
    export_key_id,
    neutralise_cell,
    public_key_from_text,
)
from audit_mw.admin.export_verify import ExportVerifyResult, verify_export
from audit_mw.admin.query import ExportRange
from audit_mw.integrity.canonical import parse_json
from audit_mw.integrity.keys import KeyRing

__all__ = [
    "FORMAT_VERSION",
    "ExportChain",
    "ExportKey",
    "ExportSigningKey",
    "ExportStats",
    "ExportVerifyResult",
    "ExportWriter",
    "astream_export",
    "export_key_from_env",
    "export_keys_from_env",
    "export_public_keys_from_env",
    "export_signing_key_from_env",
    "neutralise_cell",
    "verify_export",
    "write_export",
]

MEDIA_TYPES: Final = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
KEY_ENV: Final = "AUDIT_HMAC_KEY"
#: The Ed25519 export key (base64 seed) and the public keys that verify exports.
EXPORT_KEY_ENV: Final = "AUDIT_EXPORT_KEY"
EXPORT_PUBLIC_ENV: Final = "AUDIT_EXPORT_PUBLIC_KEYS"
#: Either key signs a manifest: Ed25519 (the web process's) or HMAC (the operator's tools).
AnyExportKey = ExportKey | ExportSigningKey

#: One exported row as the export statement returns it: id, row_to_json text, chain
#: position, content hash, entry hash (the last three null when not sealed), json nulls.
ExportRow = tuple[int, str, int | None, bytes | None, bytes | None, list[str] | None]


def export_signing_key_from_env(environ: Mapping[str, str] | None = None
                                ) -> ExportSigningKey | None:
    """The export key, ``AUDIT_EXPORT_KEY=BASE64`` (an Ed25519 seed; ``audit-mw keygen
    --export`` makes one); ``None`` when it is not set. The admin app signs with it."""
    env = os.environ if environ is None else environ
    text = env.get(EXPORT_KEY_ENV, "").strip()
    return ExportSigningKey.from_text(text) if text else None


def export_public_keys_from_env(environ: Mapping[str, str] | None = None
                                ) -> dict[str, Ed25519PublicKey]:
    """The export public keys by id, ``AUDIT_EXPORT_PUBLIC_KEYS=BASE64,BASE64`` (the current
    one and those of earlier export keys, so older exports still verify)."""
    env = os.environ if environ is None else environ
    keys = [public_key_from_text(t) for t in env.get(EXPORT_PUBLIC_ENV, "").split(",")
            if t.strip()]
    return {export_key_id(k): k for k in keys}


def export_key_from_env(environ: Mapping[str, str] | None = None) -> ExportKey | None:
    """The current checkpoint key as an HMAC export key, ``AUDIT_HMAC_KEY=KEY_ID:BASE64``:
    for the operator's own tools (the CLI, retention archives), never the web process."""
    ring = KeyRing.from_env(environ)
    if ring.current_kid is None:
        return None
    return ExportKey(ring.current_kid, ring.hmac_keys[ring.current_kid])


def export_keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, ExportKey]:
    """Every HMAC key of the environment by id (``AUDIT_HMAC_KEY`` and ``AUDIT_HMAC_KEYS``),
    so that exports signed before a key rotation still verify."""
    ring = KeyRing.from_env(environ)
    return {kid: ExportKey(kid, secret) for kid, secret in ring.hmac_keys.items()}


class ExportWriter:
    """Turns exported rows into the bytes of an export file; pure, no I/O.

    Call :meth:`header`, then :meth:`rows` for each batch of :data:`ExportRow`, then
    :meth:`manifest`. The digest is kept as the bytes go by, so memory stays flat.
    """

    def __init__(
        self, export: ExportRange, columns: Sequence[str], key: AnyExportKey,
        *, generated_at: datetime | None = None,
    ) -> None:
        self.export = export
        self.event_columns = list(columns)
        self.columns = [*columns, *CHAIN_COLUMNS]
        self.key = key
        self.generated_at = generated_at or datetime.now(UTC)
        self.stats = ExportStats()
        self._digest = hashlib.sha256()
        self._last_text: str | None = None
        self._last_position: int | None = None
        self._merkle = MerkleRoot()

    def _emit(self, data: bytes) -> bytes:
        self._digest.update(data)
        return data

    def header(self) -> bytes:
        """The first line: format, range and columns (NDJSON) or column names (CSV)."""
        if self.export.format == "csv":
            return self._emit((",".join(self.columns) + "\r\n").encode())
        head = {"audit_mw_export": FORMAT_VERSION, "format": "ndjson",
                "from": _iso(self.export.start), "to": _iso(self.export.end),
                "columns": self.columns}
        return self._emit(json.dumps(head, separators=(",", ":")).encode() + b"\n")

    def rows(self, batch: Sequence[ExportRow]) -> bytes:
        """The lines of a batch of rows, in order."""
        if not batch:
            return b""
        stats = self.stats
        if stats.first is None:
            stats.first = _entry(json.loads(batch[0][1]), batch[0][2])
        stats.count += len(batch)
        for row in batch:
            if row[2] is None:
                stats.unsealed += 1
            else:
                stats.sealed += 1
                if stats.first_position is None:
                    stats.first_position = row[2]
                stats.last_position = row[2]
        self._last_text = batch[-1][1]
        self._last_position = batch[-1][2]
        if self.export.format == "csv":
            records = [self._csv_line(row) for row in batch]
            for record in records:
                self._merkle.add(record[:-2].encode())  # without its CRLF
            return self._emit("".join(records).encode())
        # row_to_json never prints a raw newline, so each event is one line; the chain
        # columns are spliced in before its closing brace.
        lines = [text[:-1] + _chain_json(position, content, entry, nulls)
                 for _, text, position, content, entry, nulls in batch]
        for line in lines:
            self._merkle.add(line.encode())
        return self._emit(("\n".join(lines) + "\n").encode())

    def _csv_line(self, row: ExportRow) -> str:
        _, text, position, content, entry, nulls = row
        event = parse_json(text)
        cells = [csv_value(c, event.get(c)) for c in self.event_columns]
        cells += [None if position is None else str(position),
                  None if content is None else content.hex(),
                  None if entry is None else entry.hex(),
                  None if not nulls else json.dumps(nulls, separators=(",", ":"))]
        return csv_row(cells)

    def manifest(self, chain: ExportChain | None = None) -> bytes:
        """The last line: the signed manifest. Ends the export."""
        stats = self.stats
        if self._last_text is not None:
            stats.last = _entry(json.loads(self._last_text), self._last_position)
        stats.sha256 = self._digest.hexdigest()
        stats.complete = True
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "format": self.export.format,
            "from": _iso(self.export.start),
            "to": _iso(self.export.end),
            "count": stats.count,
            "sealed": stats.sealed,
            "unsealed": stats.unsealed,
            "first": stats.first,
            "last": stats.last,
            "columns": self.columns,
            "sha256": stats.sha256,
            # One leaf per event line (without its line end), RFC 6962: lets a single
            # event be proved to be in this signed export.
            "events_merkle_root": self._merkle.hexdigest(),
            "generated_at": _iso(self.generated_at),
            # The checkpoint at or after the last exported position, as stored.
            "checkpoint": dict(chain.checkpoint) if chain and chain.checkpoint else None,
            "chain": chain.to_json(stats) if chain else None,
            "verification": _verification(self.key),
        }
        if isinstance(self.key, ExportSigningKey):
            manifest["signature"] = self.key.sign(manifest)
        else:
            manifest["mac"] = self.key.mac(manifest)
        text = json.dumps(manifest, separators=(",", ":"), ensure_ascii=True)
        if self.export.format == "csv":
            return (CSV_MANIFEST + ',"' + text.replace('"', '""') + '"\r\n').encode()
        return json.dumps({"manifest": manifest}, separators=(",", ":")).encode() + b"\n"


def _verification(key: AnyExportKey) -> dict[str, Any]:
    """How to check the export, written into the manifest for whoever receives the file."""
    common = {
        "digest": "SHA-256 of every byte before the manifest line",
        "events_merkle": "RFC 6962 Merkle tree head (SHA-256; leaf 0x00 || line, node "
                         "0x01 || left || right) over each event's line or CSV record, "
                         "without its line end, in file order",
        "key_id": key.key_id,
        "chain": "each sealed event's content and entry hash are recomputed from its values; "
                 "with previous_entry_hash and the links they must reach the checkpoint's "
                 "head, which its HMAC key or Ed25519 public key authenticates",
    }
    if isinstance(key, ExportSigningKey):
        return {**common, "signature_algorithm": "Ed25519",
                "signature_covers": "'audit_mw export manifest' and a line feed, then this "
                                    "manifest without signature, JSON with sorted keys, no "
                                    "spaces, ASCII",
                "command": "audit-mw verify-export FILE --export-public-key KEY "
                           "(and --public-key for the checkpoint)"}
    return {**common, "mac_algorithm": "HMAC-SHA256",
            "mac_covers": "this manifest without mac, JSON with sorted keys, no spaces, ASCII",
            "command": "audit-mw verify-export FILE (with AUDIT_HMAC_KEY or AUDIT_HMAC_KEYS "
                       "holding this key id)"}


def _chain_json(position: int | None, content: bytes | None, entry: bytes | None,
                nulls: list[str] | None) -> str:
    if position is None or content is None or entry is None:
        chain = ',"chain_position":null,"chain_content_hash":null,"chain_entry_hash":null'
    else:
        chain = (f',"chain_position":{position},"chain_content_hash":"{content.hex()}",'
                 f'"chain_entry_hash":"{entry.hex()}"')
    listed = json.dumps(nulls, separators=(",", ":")) if nulls else "null"
    return chain + f',"json_null_columns":{listed}}}'


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _entry(event: Mapping[str, Any], position: int | None) -> dict[str, Any]:
    return {"id": event.get("id"), "occurred_at": event.get("occurred_at"),
            "chain_position": position}


async def astream_export(
    pool: AsyncConnectionPool[Any], export: ExportRange, key: AnyExportKey,
    *, stats_out: list[ExportStats] | None = None, chunk_bytes: int = 1 << 16,
    total_timeout: float | None = None, idle_timeout: float | None = None,
) -> AsyncGenerator[bytes, None]:
    """The export file as chunks, read from one snapshot through a server-side cursor.

    ``total_timeout`` bounds each statement, ``idle_timeout`` how long the transaction may
    sit idle while the consumer does not ask for the next chunk (the server then ends the
    session); seconds, ``None`` for no limit.
    """
    limits = {"total_ms": _ms(total_timeout), "idle_ms": _ms(idle_timeout)}
    def new_writer(columns: list[str]) -> ExportWriter:
        writer = ExportWriter(export, columns, key)
        if stats_out is not None:
            stats_out.append(writer.stats)
        return writer

    async with (pool.connection() as conn,
                aclosing(_export_async.export_parts(conn, export, new_writer,
                                                     limits=limits)) as parts):
        pending: list[bytes] = []
        size = 0
        async for data in parts:
            pending.append(data)
            size += len(data)
            if size >= chunk_bytes:
                yield b"".join(pending)
                pending, size = [], 0
        if pending:
            yield b"".join(pending)


def _ms(seconds: float | None) -> str:
    return "0" if seconds is None else str(max(1, round(seconds * 1000)))


def write_export(
    conn: psycopg.Connection[Any], export: ExportRange, key: AnyExportKey, out: BinaryIO
) -> ExportStats:
    """Write the export to ``out`` from one snapshot; the CLI's shell of :class:`ExportWriter`."""
    writers: list[ExportWriter] = []

    def new_writer(columns: list[str]) -> ExportWriter:
        writers.append(ExportWriter(export, columns, key))
        return writers[0]

    with closing(_export_sync.export_parts(conn, export, new_writer)) as parts:
        for data in parts:
            out.write(data)
    return writers[0].stats
