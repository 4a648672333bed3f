"""The export file format, shared by the writer and the offline verifier.

- the chain columns each exported event carries after the columns of ``audit.events``;
- the CSV cell encoding (PostgreSQL's ``COPY ... CSV`` convention: an SQL NULL is an empty,
  unquoted cell and every value is quoted, so that ``""`` is an empty string; a value a
  spreadsheet would run as a formula, or that starts with ``'``, gets a leading ``'``), and
  its exact inverse;
- how an exported event becomes the canonical texts the chain hashed;
- what an export wrote (:class:`ExportStats`) and what links it to the chain
  (:class:`ExportChain`, built from the rows of the chain statements).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from audit_mw import _sql
from audit_mw.admin.query import ExportRange
from audit_mw.errors import ConfigurationError
from audit_mw.integrity.canonical import (
    CONTENT_COLUMNS,
    canonical_text,
    content_hash,
    jsonb_text,
)
from audit_mw.integrity.chain import GENESIS
from audit_mw.integrity.seal import checkpoint_from_row

FORMAT_VERSION: Final = 2
#: After the columns of audit.events: the chain entry of a sealed event (nulls when it is
#: not sealed yet), and the jsonb columns that hold a JSON null rather than an SQL NULL.
CHAIN_COLUMNS: Final = ("chain_position", "chain_content_hash", "chain_entry_hash",
                        "json_null_columns")
JSONB_COLUMNS: Final = frozenset({"old_values", "new_values", "context_extra", "metadata"})
ARRAY_COLUMNS: Final = frozenset({"changed_fields", "context_issues"})
CSV_MANIFEST: Final = "#manifest"
MIN_KEY_BYTES: Final = 16
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r", "'")
_CSV_CELL = re.compile(r'"((?:[^"]|"")*)"|([^,"\r\n]*)')


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
        return hmac.new(self.secret, canonical_manifest(manifest), hashlib.sha256).hexdigest()


def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a manifest's MAC covers: JSON without ``mac``, sorted keys, no spaces, ASCII."""
    body = {k: v for k, v in manifest.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def neutralise_cell(value: str) -> str:
    """``value`` made inert for spreadsheets: a leading formula character gets a ``'``.

    A value that already starts with ``'`` gets one too, so that taking one leading ``'``
    off (:func:`restore_cell`) always gives the value back.
    """
    return "'" + value if value.startswith(_FORMULA_STARTS) else value


def restore_cell(cell: str) -> str:
    """The inverse of :func:`neutralise_cell`."""
    return cell[1:] if cell.startswith("'") else cell


def csv_row(cells: Sequence[str | None]) -> str:
    """One CSV record: ``None`` as an empty unquoted cell, every value neutralised and quoted."""
    return ",".join(
        "" if c is None else '"' + neutralise_cell(c).replace('"', '""') + '"'
        for c in cells) + "\r\n"


def parse_csv_record(text: str) -> list[str | None] | None:
    """The cells of one record (without its line end), ``None`` for an empty unquoted cell;
    ``None`` when the text is not well-formed CSV. Values are returned as written (still
    neutralised)."""
    cells: list[str | None] = []
    pos, end = 0, len(text)
    while True:
        match = _CSV_CELL.match(text, pos)
        if match is None:  # the pattern matches the empty string: never None
            return None
        quoted, bare = match.group(1), match.group(2)
        cells.append(quoted.replace('""', '"') if quoted is not None else (bare or None))
        pos = match.end()
        if pos == end:
            return cells
        if text[pos] != ",":
            return None
        pos += 1


def csv_records(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """``(first line number, record text without its line end)`` of CSV lines, joining the
    lines of a quoted value that spans several (an even number of quotes closes a record)."""
    pending: list[str] = []
    quotes = 0
    start = 0
    for number, line in enumerate(lines, start=1):
        if not pending:
            start = number
        pending.append(line)
        quotes += line.count('"')
        if quotes % 2 == 0:
            record = "".join(pending)
            yield start, record[:-2] if record.endswith("\r\n") else record.rstrip("\n")
            pending, quotes = [], 0
    if pending:
        yield start, "".join(pending)


def csv_value(column: str, value: Any) -> str | None:
    """The CSV cell text of a value parsed from ``row_to_json`` (with ``parse_json``):
    jsonb and arrays as PostgreSQL prints jsonb, booleans as ``true``/``false``."""
    if value is None:
        return None
    if column in JSONB_COLUMNS or isinstance(value, dict | list):
        return jsonb_text(value)
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class ChainFields:
    """The chain entry an exported event carries (``position`` is ``None`` when unsealed)."""

    position: int | None
    content_hash: bytes | None
    entry_hash: bytes | None
    json_nulls: frozenset[str]


def chain_fields(event: Mapping[str, Any]) -> ChainFields:
    """The chain columns of an exported event; ``ValueError`` when they are malformed."""
    raw = event.get("chain_position")
    position = None if raw is None else int(raw)
    if position is not None and position < 1:
        raise ValueError("chain_position must be positive")
    nulls = event.get("json_null_columns")
    if isinstance(nulls, str):
        nulls = json.loads(nulls)
    if nulls is not None and (not isinstance(nulls, list)
                              or not set(nulls) <= JSONB_COLUMNS):
        raise ValueError("json_null_columns must list jsonb columns")
    return ChainFields(position, _hash(event.get("chain_content_hash")),
                       _hash(event.get("chain_entry_hash")), frozenset(nulls or ()))


def _hash(value: Any) -> bytes | None:
    if value is None:
        return None
    raw = bytes.fromhex(str(value))
    if len(raw) != 32:
        raise ValueError("a chain hash is 32 bytes, 64 hex digits")
    return raw


def event_content(event: Mapping[str, Any], json_nulls: frozenset[str], *, parsed: bool
                  ) -> tuple[int, bytes]:
    """``(id, content hash)`` of an exported event, recomputed from its values.

    ``parsed``: the values come from a JSON line (jsonb and arrays as JSON values), not
    from CSV cells (their text). Raises ``ValueError``/``TypeError``/``KeyError`` when a
    value cannot be read as its column's type.
    """
    texts: list[str | None] = []
    for column in CONTENT_COLUMNS:
        value = event[column]
        if value is None:
            texts.append("null" if column in json_nulls else None)
        elif parsed and (column in JSONB_COLUMNS or column in ARRAY_COLUMNS):
            if column in ARRAY_COLUMNS and not isinstance(value, list):
                raise TypeError(f"{column}: expected an array")
            texts.append(jsonb_text(value))
        else:
            texts.append(canonical_text(column, value))
    event_id = canonical_text("id", event["id"])
    if event_id is None:
        raise ValueError("the event has no id")
    return int(event_id), content_hash(texts)


@dataclass(slots=True)
class ExportStats:
    """What an export wrote, known once it is finished."""

    count: int = 0
    sealed: int = 0
    unsealed: int = 0
    sha256: str = ""
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    first_position: int | None = None
    last_position: int | None = None
    complete: bool = False


@dataclass(frozen=True, slots=True)
class ExportChain:
    """What links the exported slice to the chain, read after the rows (same snapshot)."""

    chain_id: str
    previous_hash: bytes
    checkpoint: Mapping[str, Any] | None
    links: Sequence[tuple[int, int, bytes]]

    def to_json(self, stats: ExportStats) -> dict[str, Any]:
        """The manifest's ``chain`` member."""
        return {
            "chain_id": self.chain_id,
            "first_position": stats.first_position,
            "last_position": stats.last_position,
            "previous_entry_hash": self.previous_hash.hex(),
            "links": [[pos, event_id, content.hex()] for pos, event_id, content in self.links],
        }


def range_params(export: ExportRange) -> dict[str, Any]:
    """The parameters of the export statements for ``export``'s range."""
    return {"start": export.start, "end": export.end}


def checkpoint_columns() -> Any:
    """The checkpoint columns, as the covering-checkpoint statement selects them."""
    return _sql.query("integrity", "checkpoint_columns")


def chain_params(export: ExportRange, stats: ExportStats, checkpoint_position: int
                 ) -> dict[str, Any]:
    """The parameters of the links statement: the range and the chain positions."""
    return {**range_params(export), "first": stats.first_position,
            "last": checkpoint_position}


def make_chain(chain_id: Any, previous: Any, checkpoint: dict[str, Any] | None,
               links: Sequence[Any]) -> ExportChain:
    """The :class:`ExportChain` from the rows the chain statements returned."""
    cp = checkpoint_from_row(checkpoint).to_json() if checkpoint else None
    return ExportChain(
        chain_id=str(chain_id[0]) if chain_id else "",
        previous_hash=bytes(previous[0]) if previous else GENESIS,
        checkpoint=cp,
        links=[(int(r[0]), int(r[1]), bytes(r[2])) for r in links])
