"""The canonical encoding of an audit event: how a row becomes hash input, byte for byte.

Pure functions, no I/O. ``docs/integrity.md`` is the specification; this module is its
reference implementation and the test vectors there are checked against it.

Every column of ``audit.events`` is hashed. ``id`` goes into the entry hash directly; the
other 25 columns, in :data:`CONTENT_COLUMNS` order, each as its *canonical text* (a string,
or ``None`` for SQL NULL), form the content::

    field   = 0x00                                  (NULL)
            | 0x01 || uint32_be(len(utf8)) || utf8  (a value)
    content_hash = SHA-256("audit_mw content v1\\x00" || field_1 || ... || field_25)

The canonical text of each column type is what PostgreSQL prints for it in a fixed form,
independent of the session's TimeZone, DateStyle, extra_float_digits and locale:

- ``timestamptz``: UTC, ``YYYY-MM-DDTHH:MM:SS.ffffffZ`` (always six fractional digits, the
  precision stored); ``infinity`` / ``-infinity``;
- ``jsonb``: PostgreSQL's ``jsonb`` output (keys ordered by length then bytes, ``", "`` and
  ``": "`` separators, numbers as stored, e.g. ``1.50`` and ``0.0000001``);
- ``text[]``: the array as ``jsonb`` (``["a", "b"]``);
- ``inet``: PostgreSQL's output (``192.0.2.1``, ``10.0.0.0/8``);
- ``xid8``, ``bigint``: decimal; ``uuid``: lower-case with hyphens; ``boolean``:
  ``true``/``false``; ``text``: the string as stored (no Unicode normalisation).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from psycopg.types.json import Json, Jsonb

__all__ = [
    "COLUMNS",
    "CONTENT_COLUMNS",
    "canonical_row",
    "canonical_text",
    "content_hash",
    "encode_fields",
    "entry_hash",
    "entry_hash_from_content",
    "jsonb_text",
    "parse_json",
]

#: Every column of ``audit.events``, in table order.
COLUMNS: tuple[str, ...] = (
    "id", "occurred_at", "kind", "action", "schema_name", "table_name", "record_id",
    "old_values", "new_values", "changed_fields", "app_user_id", "client_ip", "request_id",
    "user_agent", "context_extra", "context_issues", "db_role", "application_name",
    "client_addr", "txid", "event_id", "success", "reason", "resource_type", "resource_id",
    "metadata",
)
#: The columns hashed into the content hash, in this order (all but ``id``).
CONTENT_COLUMNS: tuple[str, ...] = COLUMNS[1:]


CONTENT_TAG = b"audit_mw content v1\x00"
ENTRY_TAG = b"audit_mw entry v1\x00"
_NULL = b"\x00"
_VALUE = b"\x01"
_MAX_FIELD = 2**32 - 1


def encode_fields(values: Sequence[bytes | str | None]) -> bytes:
    """Length-prefixed concatenation of canonical texts (``str`` or UTF-8 ``bytes``)."""
    parts = []
    for value in values:
        if value is None:
            parts.append(_NULL)
            continue
        data = value.encode() if isinstance(value, str) else value
        if len(data) > _MAX_FIELD:
            raise ValueError("a field longer than 4 GiB cannot be encoded")
        parts.append(_VALUE + len(data).to_bytes(4, "big") + data)
    return b"".join(parts)


def content_hash(values: Sequence[bytes | str | None]) -> bytes:
    """SHA-256 over the 25 content fields, in :data:`CONTENT_COLUMNS` order."""
    if len(values) != len(CONTENT_COLUMNS):
        raise ValueError(f"expected {len(CONTENT_COLUMNS)} content fields, got {len(values)}")
    return hashlib.sha256(CONTENT_TAG + encode_fields(values)).digest()


def entry_hash_from_content(
    chain_id: uuid.UUID | str, position: int, prev_hash: bytes, event_id: int, content: bytes
) -> bytes:
    """The hash of chain entry ``position``: chain identity, place and content, linked."""
    chain = chain_id if isinstance(chain_id, uuid.UUID) else uuid.UUID(str(chain_id))
    if len(prev_hash) != 32 or len(content) != 32:
        raise ValueError("prev_hash and content hash must be 32 bytes")
    return hashlib.sha256(
        ENTRY_TAG + chain.bytes + position.to_bytes(8, "big", signed=True) + prev_hash
        + event_id.to_bytes(8, "big", signed=True) + content
    ).digest()


def entry_hash(
    row: Mapping[str, Any], prev_hash: bytes, position: int, chain_id: uuid.UUID | str
) -> bytes:
    """The entry hash of one event row, as the sealer computes it.

    ``row`` maps every column name in :data:`COLUMNS` to its value: canonical text as
    exported, or a Python value that :func:`canonical_text` converts. A missing column is an
    error, never read as NULL.
    """
    event_id, content = canonical_row(row)
    return entry_hash_from_content(chain_id, position, prev_hash, event_id,
                                   content_hash(content))


def canonical_row(row: Mapping[str, Any]) -> tuple[int, tuple[str | None, ...]]:
    """``(id, content texts)`` of a row given as a mapping of every column."""
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row lacks columns: {', '.join(missing)}")
    event_id = canonical_text("id", row["id"])
    if event_id is None:
        raise ValueError("row has no id")
    return int(event_id), tuple(canonical_text(c, row[c]) for c in CONTENT_COLUMNS)


def canonical_text(column: str, value: Any) -> str | None:
    """The canonical text of ``value`` in ``column`` (``None`` for SQL NULL).

    Strings are taken as the column's text form and normalised where the form is
    unambiguous (timestamps, JSON; wrap a decoded top-level JSON string in
    ``psycopg.types.json.Jsonb`` to say it is a value, not JSON text); Python values
    (``datetime``, JSON parsed with :func:`parse_json`, ``ipaddress`` objects, ``UUID``,
    ``bool``, ``int``) are converted. Floats are refused in JSON: they cannot say whether
    ``1.5`` was stored as ``1.50``. Raises ``ValueError`` or ``TypeError`` for bad input.
    """
    if column not in _CONVERTERS:
        raise ValueError(f"unknown column {column!r}")
    return None if value is None else _CONVERTERS[column](value)


def _jsonb_value(value: Any) -> str:
    if isinstance(value, (Json, Jsonb)):  # an explicit JSON value, even a bare string
        return jsonb_text(value.obj)
    return jsonb_text(parse_json(value) if isinstance(value, str) else value)


def _text_array(value: Any) -> str:
    items = parse_json(value) if isinstance(value, str) else value
    if not isinstance(items, list):
        raise TypeError("expected a JSON array of strings")
    return jsonb_text(items)


def _integer(value: Any) -> str:
    if isinstance(value, bool):
        raise TypeError("expected an integer")
    return str(int(value))


def _uuid(value: Any) -> str:
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected text, got {type(value).__name__}")
    return value


def _timestamp_text(value: Any) -> str:
    if isinstance(value, str):
        if value in ("infinity", "-infinity"):
            return value
        value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime) or value.tzinfo is None:
        raise TypeError("occurred_at: expected a timezone-aware timestamp")
    utc = value.astimezone(dt.UTC)
    return f"{utc.year:04d}-{utc:%m-%dT%H:%M:%S}.{utc.microsecond:06d}Z"


def _inet_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        return str(value)
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        ip, prefix = value.ip, value.network.prefixlen
    elif isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        ip, prefix = value.network_address, value.prefixlen
    else:
        raise TypeError(f"expected an IP address, got {type(value).__name__}")
    return str(ip) if prefix == ip.max_prefixlen else f"{ip}/{prefix}"


def _boolean_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value).lower()
    if text in ("true", "t"):
        return "true"
    if text in ("false", "f"):
        return "false"
    raise ValueError(f"success: expected a boolean, got {value!r}")


def parse_json(text: str) -> Any:
    """Parse JSON keeping every number exact (``Decimal`` for non-integers)."""
    return json.loads(text, parse_float=Decimal)


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}


def _json_string(text: str) -> str:
    # PostgreSQL's escape_json: the named escapes, \u00XX for other control characters,
    # everything else (including non-ASCII) verbatim.
    if not any(c in _ESCAPES or c < " " for c in text):
        return f'"{text}"'
    out = []
    for c in text:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c < " ":
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _number(value: int | Decimal) -> str:
    if isinstance(value, int):
        return str(value)
    if not value.is_finite():
        raise ValueError("JSON numbers must be finite")
    text = format(value, "f")
    # numeric has no negative zero: PostgreSQL prints -0.0 as 0.0.
    return text[1:] if value.is_zero() and text.startswith("-") else text


def jsonb_text(value: Any) -> str:
    """``value`` (parsed with :func:`parse_json`) printed exactly as PostgreSQL prints jsonb."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, Decimal)):
        return _number(value)
    if isinstance(value, float):
        raise TypeError("float in JSON: parse with parse_json() so numbers stay exact")
    if isinstance(value, str):
        return _json_string(value)
    if isinstance(value, Mapping):
        # jsonb orders keys by length in bytes, then bytewise; the last duplicate wins.
        items = sorted(((str(k).encode(), v) for k, v in value.items()),
                       key=lambda kv: (len(kv[0]), kv[0]))
        body = ", ".join(f"{_json_string(k.decode())}: {jsonb_text(v)}" for k, v in items)
        return "{" + body + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


_CONVERTERS: dict[str, Callable[[Any], str]] = {
    **dict.fromkeys(COLUMNS, _text),
    "occurred_at": _timestamp_text,
    **dict.fromkeys(("old_values", "new_values", "context_extra", "metadata"), _jsonb_value),
    **dict.fromkeys(("changed_fields", "context_issues"), _text_array),
    **dict.fromkeys(("client_ip", "client_addr"), _inet_text),
    **dict.fromkeys(("id", "txid"), _integer),
    "event_id": _uuid,
    "success": _boolean_text,
}
