"""The query side of the admin routes, as pure functions: no I/O, no framework.

Input arrives as the ``(name, value)`` pairs of a query string. :func:`parse_event_query`,
:func:`parse_history_query` and :func:`parse_export_range` validate them against allow-lists
and turn them into small frozen specs; :func:`where_clause` turns filters into a
``psycopg.sql`` fragment in which every column is an allow-listed ``Identifier`` and every
value a bind parameter. Anything wrong raises :class:`~audit_mw.errors.QueryError` naming the
parameter, which the routes turn into a 400.

Cursors (keyset pagination) are opaque tokens authenticated with HMAC-SHA256 under a
per-app secret. A cursor carries the last id seen, the page number, the time it was issued
and a digest of the filters it belongs to, so a cursor that was edited, forged, issued by
another app, reused with other filters or older than its time-to-live is refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from psycopg import sql

from audit_mw.errors import QueryError

__all__ = [
    "COUNT_CAP",
    "DEFAULT_LIMIT",
    "EVENT_FILTERS",
    "KINDS",
    "MAX_LIMIT",
    "CursorCodec",
    "EventQuery",
    "ExportRange",
    "HistoryQuery",
    "filters_digest",
    "no_parameters",
    "parse_event_query",
    "parse_export_range",
    "parse_history_query",
    "parse_timestamp",
    "where_clause",
]

DEFAULT_LIMIT: Final = 50
MAX_LIMIT: Final = 200
#: ``total`` is exact up to this many matches; above it, it is this number and
#: ``total_exact`` is false. Page-number access reaches the same depth; the cursor goes on.
COUNT_CAP: Final = 10_000
#: The longest value accepted for any parameter (a cursor is about 150 characters).
MAX_VALUE_LENGTH: Final = 1024
KINDS: Final = ("data", "auth", "admin", "access")
FORMATS: Final = ("ndjson", "csv")


def _text(limit: int) -> Callable[[str, str], str]:
    def parse(name: str, value: str) -> str:
        if len(value) > limit:
            raise QueryError(name, f"must be at most {limit} characters")
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise QueryError(name, "must not contain control characters")
        if _SURROGATE.search(value):
            # Cannot be encoded as UTF-8: PostgreSQL would never see it, psycopg would raise.
            raise QueryError(name, "must be valid Unicode (no lone surrogates)")
        return value

    return parse


_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _kind(name: str, value: str) -> str:
    if value not in KINDS:
        raise QueryError(name, f"must be one of {', '.join(KINDS)}")
    return value


def _bool(name: str, value: str) -> bool:
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise QueryError(name, "must be true or false")


def _ip(name: str, value: str) -> str:
    # An address matches itself; a network (10.0.0.0/8) matches every address in it. A
    # zone id (fe80::1%eth0) is valid for Python, not for inet: refused here, not by a 500.
    if "%" in value or not value.isascii():
        raise QueryError(name, "must be an IP address or a network in CIDR form, without a "
                               "zone id")
    try:
        if "/" in value:
            return str(ipaddress.ip_network(value, strict=False))
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise QueryError(name, "must be an IP address or a network in CIDR form") from None


def parse_timestamp(name: str, value: str) -> datetime:
    """An ISO 8601 timestamp with a time zone (``2024-03-01T00:00:00Z``), else QueryError."""
    if len(value) > 64:
        raise QueryError(name, "must be an ISO 8601 timestamp with a time zone")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise QueryError(
            name, "must be an ISO 8601 timestamp with a time zone, e.g. 2024-03-01T00:00:00Z"
        ) from None
    if parsed.tzinfo is None or parsed.utcoffset() is None:
        raise QueryError(name, "needs a time zone (Z or +hh:mm): a bare time is ambiguous")
    try:
        # In UTC the year must stay within 1..9999: 0001-01-01T00:00:00+05:00 is in year 0,
        # which PostgreSQL accepts and Python cannot represent (a stream would break).
        in_utc: datetime | None = parsed.astimezone(UTC)
    except OverflowError:
        in_utc = None
    if in_utc is None:
        raise QueryError(name, "must fall between years 1 and 9999 in UTC")
    return parsed


@dataclass(frozen=True, slots=True)
class _Filter:
    column: str
    parse: Callable[[str, str], Any]
    operator: str = "="
    cast: str | None = None


#: Query parameter -> how it filters audit.events. The only columns a caller can reach.
EVENT_FILTERS: Final[Mapping[str, _Filter]] = {
    "user_id": _Filter("app_user_id", _text(256)),
    "record_id": _Filter("record_id", _text(MAX_VALUE_LENGTH)),
    "table": _Filter("table_name", _text(128)),
    "action": _Filter("action", _text(64)),
    "kind": _Filter("kind", _kind),
    "success": _Filter("success", _bool),
    "request_id": _Filter("request_id", _text(128)),
    "ip": _Filter("client_ip", _ip, "<<=", "inet"),
    "from": _Filter("occurred_at", parse_timestamp, ">="),
    "to": _Filter("occurred_at", parse_timestamp, "<"),
}

_OPERATORS: Final = {"=": sql.SQL("="), ">=": sql.SQL(">="), "<": sql.SQL("<"),
                     "<<=": sql.SQL("<<=")}


def _single_values(
    items: Iterable[tuple[str, str]], allowed: Iterable[str]
) -> dict[str, str]:
    allowed = set(allowed)
    values: dict[str, str] = {}
    for name, value in items:
        if name not in allowed:
            # Echoed back in the error: short and printable, whatever was sent.
            shown = "".join(c if c.isprintable() else "?" for c in name[:40])
            shown += "..." if len(name) > 40 else ""
            expected = (f"expected one of {', '.join(sorted(allowed))}" if allowed
                        else "this endpoint takes no parameters")
            raise QueryError(shown, f"unknown parameter; {expected}")
        if name in values:
            raise QueryError(name, "given more than once")
        if len(value) > MAX_VALUE_LENGTH:
            raise QueryError(name, f"must be at most {MAX_VALUE_LENGTH} characters")
        if value == "":
            raise QueryError(name, "must not be empty")
        values[name] = value
    return values


def _int(name: str, value: str, low: int, high: int) -> int:
    if not value.isascii() or not value.isdigit() or len(value) > 12:
        raise QueryError(name, f"must be a whole number from {low} to {high}")
    number = int(value)
    if not low <= number <= high:
        raise QueryError(name, f"must be a whole number from {low} to {high}")
    return number


def _range_check(filters: Mapping[str, Any]) -> None:
    start, end = filters.get("from"), filters.get("to")
    if start is not None and end is not None and start > end:
        raise QueryError("from", "must not be after to")


def filters_digest(scope: str, filters: Mapping[str, Any]) -> str:
    """A short digest naming a route and its filters, so a cursor stays with them."""
    canonical = json.dumps(
        [scope, sorted((k, v.isoformat() if isinstance(v, datetime) else v)
                       for k, v in filters.items())],
        separators=(",", ":"), default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class EventQuery:
    """A validated ``GET /events``: filters, page size, and where the page starts.

    ``before_id`` (from a cursor) starts the page after that id, newest first; otherwise
    ``page`` counts pages of ``limit`` from the newest match.
    """

    filters: Mapping[str, Any]
    limit: int = DEFAULT_LIMIT
    page: int = 1
    before_id: int | None = None

    @property
    def offset(self) -> int:
        """Rows to skip: zero with a cursor, else the pages before this one."""
        return 0 if self.before_id is not None else (self.page - 1) * self.limit

    def described_filters(self) -> dict[str, Any]:
        """The filters as JSON-ready values, for the access event."""
        return {k: v.isoformat() if isinstance(v, datetime) else v
                for k, v in sorted(self.filters.items())}


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """A validated ``GET /records/{table}/{record_id}``: oldest first, from ``after_id``."""

    table: str
    record_id: str
    schema: str | None = None
    limit: int = MAX_LIMIT
    page: int = 1
    after_id: int | None = None

    @property
    def filters(self) -> dict[str, str]:
        """The filters as they take part in the cursor digest and the access event."""
        found = {"table": self.table, "record_id": self.record_id}
        if self.schema is not None:
            found["schema"] = self.schema
        return found


@dataclass(frozen=True, slots=True)
class ExportRange:
    """A validated export: ``[start, end)`` of ``occurred_at``, in one format."""

    start: datetime
    end: datetime
    format: str = "ndjson"
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CursorCodec:
    """Signs and checks pagination cursors.

    ``secret`` is per app (32 random bytes unless given: cursors then end with the
    process; pass the same secret to every worker of one deployment). ``ttl`` is how many
    seconds a cursor stays valid.
    """

    secret: bytes
    ttl: float = 3600.0
    clock: Callable[[], float] = time.time

    def encode(self, digest: str, last_id: int, page: int) -> str:
        """A cursor for the page after ``last_id``, which will be page number ``page``."""
        payload = json.dumps(
            {"d": digest, "i": last_id, "p": page, "t": math.floor(self.clock())},
            separators=(",", ":"),
        ).encode()
        mac = hmac.new(self.secret, payload, hashlib.sha256).digest()[:16]
        return f"{_b64(payload)}.{_b64(mac)}"

    def decode(self, token: str, digest: str) -> tuple[int, int]:
        """``(last_id, page)`` of a cursor issued by this app for these filters."""
        payload_part, dot, mac_part = token.partition(".")
        if not dot or len(token) > 512:
            raise QueryError("cursor", "is not a cursor issued by this service")
        try:
            payload, mac = _unb64(payload_part), _unb64(mac_part)
        except (binascii.Error, ValueError):
            raise QueryError("cursor", "is not a cursor issued by this service") from None
        expected = hmac.new(self.secret, payload, hashlib.sha256).digest()[:16]
        if not hmac.compare_digest(mac, expected):
            raise QueryError("cursor", "is not a cursor issued by this service")
        try:
            fields = json.loads(payload)
            last_id, page, issued = int(fields["i"]), int(fields["p"]), float(fields["t"])
            owner = str(fields["d"])
        except (ValueError, KeyError, TypeError):  # signed by us, so only after a format change
            raise QueryError("cursor", "is not a cursor issued by this service") from None
        if owner != digest:
            raise QueryError("cursor", "belongs to other filters; start again without a cursor")
        if self.clock() - issued > self.ttl:
            raise QueryError("cursor", "has expired; start again without a cursor")
        return last_id, page


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    if not text or not text.isascii():
        raise ValueError("empty")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def parse_event_query(items: Iterable[tuple[str, str]], codec: CursorCodec) -> EventQuery:
    """Validate the query string of ``GET /events``."""
    values = _single_values(items, (*EVENT_FILTERS, "page", "limit", "cursor"))
    filters: dict[str, Any] = {}
    for name, spec in EVENT_FILTERS.items():
        if name in values:
            filters[name] = spec.parse(name, values[name])
    _range_check(filters)
    limit = _int("limit", values["limit"], 1, MAX_LIMIT) if "limit" in values else DEFAULT_LIMIT
    if "cursor" in values:
        if "page" in values:
            raise QueryError("page", "cannot be combined with cursor; the cursor knows its page")
        before_id, page = codec.decode(values["cursor"], filters_digest("events", filters))
        return EventQuery(filters, limit, page, before_id)
    max_page = COUNT_CAP // limit
    if "page" in values:
        page = _int("page", values["page"], 1, 10**9)
        if page > max_page:
            raise QueryError(
                "page", f"must be at most {max_page} with limit {limit}: page numbers reach the "
                f"first {COUNT_CAP} matches; follow next_cursor to go deeper")
    else:
        page = 1
    return EventQuery(filters, limit, page)


def no_parameters(items: Iterable[tuple[str, str]]) -> None:
    """Refuse any query parameter (for endpoints that take none)."""
    _single_values(items, ())


def parse_history_query(
    table: str, record_id: str, items: Iterable[tuple[str, str]], codec: CursorCodec
) -> HistoryQuery:
    """Validate ``GET /records/{table}/{record_id}``."""
    table = _text(128)("table", table)
    record_id = _text(MAX_VALUE_LENGTH)("record_id", record_id)
    if not table:
        raise QueryError("table", "must not be empty")
    if not record_id:
        raise QueryError("record_id", "must not be empty")
    values = _single_values(items, ("schema", "limit", "cursor"))
    schema = _text(128)("schema", values["schema"]) if "schema" in values else None
    limit = _int("limit", values["limit"], 1, MAX_LIMIT) if "limit" in values else MAX_LIMIT
    query = HistoryQuery(table, record_id, schema, limit)
    if "cursor" in values:
        after_id, page = codec.decode(values["cursor"], filters_digest("records", query.filters))
        return HistoryQuery(table, record_id, schema, limit, page, after_id)
    return query


def parse_export_range(
    items: Iterable[tuple[str, str]], *, allowed_extra: Iterable[str] = ()
) -> ExportRange:
    """Validate ``from``, ``to`` (both required) and ``format`` of an export."""
    extra_names = tuple(allowed_extra)
    values = _single_values(items, ("from", "to", "format", *extra_names))
    for name in ("from", "to"):
        if name not in values:
            raise QueryError(name, "is required: an export covers one time range")
    start = parse_timestamp("from", values["from"])
    end = parse_timestamp("to", values["to"])
    _range_check({"from": start, "to": end})
    fmt = values.get("format", "ndjson")
    if fmt not in FORMATS:
        raise QueryError("format", f"must be one of {', '.join(FORMATS)}")
    extra = {k: values[k] for k in extra_names if k in values}
    return ExportRange(start, end, fmt, extra)


def where_clause(
    filters: Mapping[str, Any], *, before_id: int | None = None
) -> tuple[sql.Composable, dict[str, Any]]:
    """``WHERE`` conditions for ``filters`` (and the keyset bound), with their parameters."""
    parts: list[sql.Composable] = []
    params: dict[str, Any] = {}
    for name, value in filters.items():
        spec = EVENT_FILTERS[name]
        placeholder: sql.Composable = sql.Placeholder(f"f_{name}")
        if spec.cast:
            placeholder = sql.SQL("{}::{}").format(placeholder, sql.Identifier(spec.cast))
        parts.append(sql.SQL("{} {} {}").format(
            sql.Identifier("e", spec.column), _OPERATORS[spec.operator], placeholder))
        params[f"f_{name}"] = value
    if before_id is not None:
        parts.append(sql.SQL("{} < {}").format(sql.Identifier("e", "id"),
                                               sql.Placeholder("before_id")))
        params["before_id"] = before_id
    if not parts:
        return sql.SQL("true"), params
    return sql.SQL(" AND ").join(parts), params
