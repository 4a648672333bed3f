"""Exports of the trail for a date range, and their offline verification.

An export is one file an auditor can check without database access:

- **NDJSON** (``application/x-ndjson``): a header line
  ``{"audit_mw_export":1,"format":"ndjson","from":...,"to":...,"columns":[...]}``, then one
  event per line (every column of ``audit.events``, as PostgreSQL's ``row_to_json`` prints
  it, timestamps in UTC), oldest first, then the manifest line ``{"manifest":{...}}``.
- **CSV** (``text/csv``): a header row of column names, one row per event (JSON values for
  ``jsonb`` and array columns, ``true``/``false``, an empty cell for null), then the row
  ``#manifest,<manifest JSON>``. A cell that a spreadsheet would run as a formula (it starts
  with ``=``, ``+``, ``-``, ``@``, tab or carriage return) is prefixed with ``'``.

The manifest says what was exported (range, count, first and last entry, columns), gives
the SHA-256 of every byte before the manifest line, and carries an HMAC-SHA256 over its own
canonical JSON (sorted keys, no spaces, ASCII) with the key from ``AUDIT_HMAC_KEY``. So an
edited, removed or added line changes the digest or the count, and a recomputed digest
does not carry a valid MAC without the key. :func:`verify_export` checks all of it.

:class:`ExportWriter` is the pure core (rows in, bytes out); :func:`stream_export` (async,
for the HTTP route) and :func:`write_export` (sync, for the CLI) only move rows to it.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Final

import psycopg
from psycopg_pool import AsyncConnectionPool

from audit_mw import _sql
from audit_mw.admin.query import ExportRange
from audit_mw.errors import ConfigurationError
from audit_mw.integrity.keys import KeyRing

__all__ = [
    "FORMAT_VERSION",
    "ExportKey",
    "ExportStats",
    "ExportWriter",
    "VerifyResult",
    "export_key_from_env",
    "export_keys_from_env",
    "neutralise_cell",
    "stream_export",
    "verify_export",
    "write_export",
]

FORMAT_VERSION: Final = 1
MEDIA_TYPES: Final = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
_CSV_MANIFEST: Final = "#manifest"
#: Rows fetched from the server cursor at a time: the memory an export holds.
BATCH_ROWS: Final = 2000
KEY_ENV: Final = "AUDIT_HMAC_KEY"
MIN_KEY_BYTES: Final = 16


@dataclass(frozen=True, slots=True)
class ExportKey:
    """The HMAC key that authenticates export manifests (never stored in the database)."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ConfigurationError(
                f"the export key must be at least {MIN_KEY_BYTES} bytes long")
        if not self.key_id:
            raise ConfigurationError("the export key needs a non-empty key id")

    def mac(self, manifest: Mapping[str, Any]) -> str:
        """HMAC-SHA256 of ``manifest`` (without its ``mac`` field), hex."""
        return hmac.new(self.secret, _canonical(manifest), hashlib.sha256).hexdigest()


def export_key_from_env(environ: Mapping[str, str] | None = None) -> ExportKey | None:
    """The current checkpoint key, ``AUDIT_HMAC_KEY=KEY_ID:BASE64`` (as the sealer's)."""
    ring = KeyRing.from_env(environ)
    if ring.current_kid is None:
        return None
    return ExportKey(ring.current_kid, ring.hmac_keys[ring.current_kid])


def export_keys_from_env(environ: Mapping[str, str] | None = None) -> dict[str, ExportKey]:
    """Every HMAC key of the environment by id (``AUDIT_HMAC_KEY`` and ``AUDIT_HMAC_KEYS``),
    so that exports signed before a key rotation still verify."""
    ring = KeyRing.from_env(environ)
    return {kid: ExportKey(kid, secret) for kid, secret in ring.hmac_keys.items()}


def _canonical(manifest: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def neutralise_cell(value: str) -> str:
    """``value`` made inert for spreadsheets: a leading formula character gets a ``'``."""
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, dict | list):
        value = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return neutralise_cell(str(value))


@dataclass(slots=True)
class ExportStats:
    """What an export wrote, known once it is finished."""

    count: int = 0
    sha256: str = ""
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    complete: bool = False


class ExportWriter:
    """Turns exported rows into the bytes of an export file; pure, no I/O.

    Call :meth:`header`, then :meth:`rows` for each batch of ``(id, row_to_json text)``,
    then :meth:`manifest`. The digest is kept as the bytes go by, so memory stays flat.
    """

    def __init__(
        self, export: ExportRange, columns: Sequence[str], key: ExportKey,
        *, generated_at: datetime | None = None,
    ) -> None:
        self.export = export
        self.columns = list(columns)
        self.key = key
        self.generated_at = generated_at or datetime.now(UTC)
        self.stats = ExportStats()
        self._digest = hashlib.sha256()
        self._last_text: str | None = None
        self._buffer = io.StringIO()
        self._csv = csv.writer(self._buffer, lineterminator="\r\n")

    def _emit(self, data: bytes) -> bytes:
        self._digest.update(data)
        return data

    def _take_csv(self) -> bytes:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text.encode()

    def header(self) -> bytes:
        """The first line: format, range and columns (NDJSON) or column names (CSV)."""
        if self.export.format == "csv":
            self._csv.writerow(self.columns)
            return self._emit(self._take_csv())
        head = {"audit_mw_export": FORMAT_VERSION, "format": "ndjson",
                "from": _iso(self.export.start), "to": _iso(self.export.end),
                "columns": self.columns}
        return self._emit(json.dumps(head, separators=(",", ":")).encode() + b"\n")

    def rows(self, batch: Sequence[tuple[int, str]]) -> bytes:
        """The lines of a batch of rows, in order."""
        if not batch:
            return b""
        if self.stats.first is None:
            self.stats.first = _entry(json.loads(batch[0][1]))
        self.stats.count += len(batch)
        self._last_text = batch[-1][1]
        if self.export.format == "csv":
            writerow, columns = self._csv.writerow, self.columns
            for _, text in batch:
                event = json.loads(text)
                writerow([_csv_cell(event.get(c)) for c in columns])
            return self._emit(self._take_csv())
        # row_to_json never prints a raw newline, so each event is one line.
        return self._emit(("\n".join(text for _, text in batch) + "\n").encode())

    def manifest(self, checkpoint: Mapping[str, Any] | None = None) -> bytes:
        """The last line: the signed manifest. Ends the export."""
        if self._last_text is not None:
            self.stats.last = _entry(json.loads(self._last_text))
        self.stats.sha256 = self._digest.hexdigest()
        self.stats.complete = True
        manifest: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "format": self.export.format,
            "from": _iso(self.export.start),
            "to": _iso(self.export.end),
            "count": self.stats.count,
            "first": self.stats.first,
            "last": self.stats.last,
            "columns": self.columns,
            "sha256": self.stats.sha256,
            "generated_at": _iso(self.generated_at),
            # The integrity checkpoint whose chain covers the last entry, once sealing runs.
            "checkpoint": dict(checkpoint) if checkpoint else None,
            "verification": {
                "digest": "SHA-256 of every byte before the manifest line",
                "mac_algorithm": "HMAC-SHA256",
                "mac_covers": "this manifest without mac, JSON with sorted keys, "
                              "no spaces, ASCII",
                "key_id": self.key.key_id,
                "command": "audit-mw verify-export FILE (with AUDIT_HMAC_KEY or "
                           "AUDIT_HMAC_KEYS holding this key id)",
            },
        }
        manifest["mac"] = self.key.mac(manifest)
        text = json.dumps(manifest, separators=(",", ":"), ensure_ascii=True)
        if self.export.format == "csv":
            self._csv.writerow([_CSV_MANIFEST, text])
            return self._take_csv()
        return json.dumps({"manifest": manifest}, separators=(",", ":")).encode() + b"\n"


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _entry(event: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": event.get("id"), "occurred_at": event.get("occurred_at")}


def _range_params(export: ExportRange) -> dict[str, Any]:
    return {"start": export.start, "end": export.end}


async def stream_export(
    pool: AsyncConnectionPool[Any], export: ExportRange, key: ExportKey,
    *, stats_out: list[ExportStats] | None = None, chunk_bytes: int = 1 << 16,
) -> AsyncIterator[bytes]:
    """The export file as chunks, read from one snapshot through a server-side cursor."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(_sql.query("admin", "export_snapshot"))
        await conn.execute(_sql.query("admin", "read_only"), {"timeout_ms": "0"})
        columns = [r[0] for r in await (
            await conn.execute(_sql.query("admin", "event_columns"))).fetchall()]
        writer = ExportWriter(export, columns, key)
        if stats_out is not None:
            stats_out.append(writer.stats)
        pending = [writer.header()]
        size = len(pending[0])
        async with conn.cursor(name="audit_mw_export") as cur:
            await cur.execute(_sql.query("admin", "export_rows"), _range_params(export))
            while batch := await cur.fetchmany(BATCH_ROWS):
                data = writer.rows(batch)
                pending.append(data)
                size += len(data)
                if size >= chunk_bytes:
                    yield b"".join(pending)
                    pending, size = [], 0
        pending.append(writer.manifest())
        yield b"".join(pending)


def write_export(
    conn: psycopg.Connection[Any], export: ExportRange, key: ExportKey, out: BinaryIO
) -> ExportStats:
    """Write the export to ``out`` from one snapshot; the CLI's shell of :class:`ExportWriter`."""
    with conn.transaction():
        conn.execute(_sql.query("admin", "export_snapshot"))
        conn.execute(_sql.query("admin", "read_only"), {"timeout_ms": "0"})
        columns = [r[0] for r in conn.execute(_sql.query("admin", "event_columns")).fetchall()]
        writer = ExportWriter(export, columns, key)
        out.write(writer.header())
        with conn.cursor(name="audit_mw_export") as cur:
            cur.execute(_sql.query("admin", "export_rows"), _range_params(export))
            while batch := cur.fetchmany(BATCH_ROWS):
                out.write(writer.rows(batch))
        out.write(writer.manifest())
    return writer.stats


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of :func:`verify_export`: ``ok``, or the problems found."""

    ok: bool
    problems: tuple[str, ...]
    count: int
    manifest: Mapping[str, Any] | None


def _lines_but_last(source: Iterable[bytes], digest: Any, last: list[bytes]) -> Iterator[bytes]:
    previous: bytes | None = None
    for line in source:
        if previous is not None:
            digest.update(previous)
            yield previous
        previous = line
    last.append(previous or b"")


def _parse_manifest(line: bytes) -> dict[str, Any] | None:
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        if text.startswith('{"manifest"'):
            found = json.loads(text)["manifest"]
        elif text.startswith(_CSV_MANIFEST + ","):
            found = json.loads(next(csv.reader([text]))[1])
        else:
            return None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return found if isinstance(found, dict) else None


def _rows(lines: Iterator[bytes], fmt: str, problems: list[str]) -> Iterator[dict[str, Any]]:
    """The exported events, as dicts, from the data lines (header first)."""
    text_lines = (line.decode("utf-8", errors="replace") for line in lines)
    if fmt == "csv":
        reader = csv.reader(text_lines)
        header = next(reader, None)
        if header is None:
            problems.append("the export is empty: no header row")
            return
        for row in reader:
            if len(row) != len(header):
                problems.append(f"a row has {len(row)} cells, the header {len(header)}")
                continue
            yield dict(zip(header, row, strict=True))
        return
    head = next(text_lines, None)
    try:
        parsed_head = json.loads(head) if head else None
    except ValueError:
        parsed_head = None
    if not isinstance(parsed_head, dict) or parsed_head.get("audit_mw_export") != FORMAT_VERSION:
        problems.append("the first line is not an audit_mw export header")
    for line in text_lines:
        try:
            event = json.loads(line)
        except ValueError:
            problems.append("a line is not valid JSON")
            continue
        if not isinstance(event, dict):
            problems.append("a line is not a JSON object")
            continue
        yield event


def verify_export(
    source: Path | str | Iterable[bytes],
    key: ExportKey | Mapping[str, ExportKey] | None,
    *,
    max_problems: int = 20,
) -> VerifyResult:
    """Check an export file offline: manifest MAC, digest, count, order and range.

    ``source`` is a path or the file's lines as bytes. Needs the key that signed the
    manifest (one key, or keys by id as from :func:`export_keys_from_env`); without it the
    digest can be recomputed by anyone, so the result is not ok.
    """
    if isinstance(source, Path | str):
        with open(source, "rb") as handle:
            return verify_export(handle, key, max_problems=max_problems)
    problems: list[str] = []
    digest = hashlib.sha256()
    last: list[bytes] = []
    lines = _lines_but_last(source, digest, last)
    # The manifest comes last, but the format decides how lines are parsed: peek at the
    # first line (an NDJSON header starts with '{').
    first_line = next(lines, None)
    if first_line is None:
        return VerifyResult(False, ("the file has fewer than two lines: not an export",), 0, None)
    fmt = "ndjson" if first_line.startswith(b"{") else "csv"
    count, previous_id = 0, -1
    first: dict[str, Any] | None = None
    last_entry: dict[str, Any] | None = None
    span: list[datetime] = []  # earliest and latest occurred_at seen

    def chained() -> Iterator[bytes]:
        yield first_line
        yield from lines

    for event in _rows(chained(), fmt, problems):
        count += 1
        entry = _entry(event)
        try:
            entry["id"] = int(entry["id"])
            occurred = datetime.fromisoformat(str(entry["occurred_at"]))
        except (TypeError, ValueError):
            problems.append(f"entry {count} has no valid id or occurred_at")
            continue
        if occurred.tzinfo is None:
            problems.append(f"entry {count} has a timestamp without a time zone")
            continue
        if entry["id"] <= previous_id:
            problems.append(f"entry {count} (id {entry['id']}) is out of order")
        previous_id = entry["id"]
        first = first or entry
        last_entry = entry
        span = [min(span[0], occurred), max(span[1], occurred)] if span else [occurred] * 2
        if len(problems) > max_problems:
            break
    # Drain what is left (after too many problems), so the digest covers the whole file.
    for _ in lines:
        pass
    manifest = _parse_manifest(last[0] if last else b"")
    if manifest is None:
        problems.append("the last line is not a manifest: the export is truncated or altered")
        return VerifyResult(False, tuple(problems[:max_problems]), count, None)
    _check_manifest(manifest, key, sha256=digest.hexdigest(), count=count, first=first,
                    last=last_entry, fmt=fmt, problems=problems)
    _check_span(manifest, span, problems)
    return VerifyResult(not problems, tuple(problems[:max_problems]), count, manifest)


def _check_span(manifest: Mapping[str, Any], span: list[datetime], problems: list[str]) -> None:
    if not span:
        return
    try:
        start = datetime.fromisoformat(str(manifest.get("from")))
        end = datetime.fromisoformat(str(manifest.get("to")))
    except ValueError:
        problems.append("the manifest range is not a pair of timestamps")
        return
    if span[0] < start or span[1] >= end:
        problems.append("entries fall outside the range the manifest states")


def _check_manifest(
    manifest: Mapping[str, Any], keys: ExportKey | Mapping[str, ExportKey] | None, *,
    sha256: str, count: int, first: Mapping[str, Any] | None,
    last: Mapping[str, Any] | None, fmt: str, problems: list[str],
) -> None:
    verification = manifest.get("verification")
    key_id = verification.get("key_id") if isinstance(verification, dict) else None
    key = keys.get(str(key_id)) if isinstance(keys, Mapping) else keys
    if not keys:
        problems.append(f"no key to check the manifest MAC: set {KEY_ENV}")
    elif key is None or key_id != key.key_id:
        problems.append(f"the manifest was signed with key {key_id!r}, which is not given")
    elif not hmac.compare_digest(str(manifest.get("mac", "")), key.mac(manifest)):
        problems.append("the manifest MAC does not match: the manifest was altered "
                        "or signed with another key")
    if manifest.get("format") != fmt:
        problems.append(f"the manifest says format {manifest.get('format')!r}, the file is {fmt}")
    if manifest.get("sha256") != sha256:
        problems.append("the SHA-256 of the exported lines does not match the manifest: "
                        "lines were edited, removed or added")
    if manifest.get("count") != count:
        problems.append(f"the manifest counts {manifest.get('count')} entries, the file "
                        f"holds {count}")
    for name, seen in (("first", first), ("last", last)):
        if (manifest.get(name) or {}).get("id") != (seen or {}).get("id"):
            problems.append(f"the {name} entry does not match the manifest")
