"""The pure query layer: validation, cursors, and the WHERE clause it builds."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest
from psycopg import sql

from audit_mw.admin.query import (
    COUNT_CAP,
    CursorCodec,
    filters_digest,
    parse_event_query,
    parse_export_range,
    where_clause,
)
from audit_mw.errors import QueryError

SECRET = b"k" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def test_filters_are_parsed_and_normalised() -> None:
    query = parse_event_query([
        ("user_id", "alice"), ("success", "false"), ("ip", "10.1.2.3/8"),
        ("from", "2024-03-01T00:00:00+02:00"), ("to", "2024-03-02T00:00:00Z"),
        ("limit", "200"), ("page", "3"),
    ], CursorCodec(SECRET))
    assert query.filters == {
        "user_id": "alice", "success": False, "ip": "10.0.0.0/8",
        "from": datetime(2024, 2, 29, 22, tzinfo=UTC),
        "to": datetime(2024, 3, 2, tzinfo=UTC),
    }
    assert (query.limit, query.page, query.offset) == (200, 3, 400)
    assert parse_event_query([], CursorCodec(SECRET)).limit == 50


def test_deepest_page_number_matches_the_count_cap() -> None:
    codec = CursorCodec(SECRET)
    assert parse_event_query([("limit", "200"), ("page", str(COUNT_CAP // 200))],
                             codec).offset == COUNT_CAP - 200
    with pytest.raises(QueryError) as raised:
        parse_event_query([("limit", "200"), ("page", str(COUNT_CAP // 200 + 1))], codec)
    assert raised.value.parameter == "page"


def test_where_clause_is_identifiers_and_placeholders_only() -> None:
    hostile = "x'); DROP TABLE audit.events; --"
    where, params = where_clause({"user_id": hostile, "ip": "10.0.0.0/8"}, before_id=99)
    text = where.as_string(None)
    assert text == ('"e"."app_user_id" = %(f_user_id)s AND "e"."client_ip" <<= '
                    '%(f_ip)s::"inet" AND "e"."id" < %(before_id)s')
    assert hostile not in text
    assert params == {"f_user_id": hostile, "f_ip": "10.0.0.0/8", "before_id": 99}
    empty, none = where_clause({})
    assert isinstance(empty, sql.SQL)
    assert (empty.as_string(None), none) == ("true", {})


def test_cursor_round_trip_and_refusals() -> None:
    clock = Clock()
    codec = CursorCodec(SECRET, ttl=60, clock=clock)
    digest = filters_digest("events", {"user_id": "alice"})
    token = codec.encode(digest, 1234, 7)
    assert codec.decode(token, digest) == (1234, 7)

    def refused(token: str, digest: str = digest, codec: CursorCodec = codec) -> str:
        with pytest.raises(QueryError) as raised:
            codec.decode(token, digest)
        assert raised.value.parameter == "cursor"
        return raised.value.message

    payload, mac = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(payload + "=="))
    forged["i"] = 1
    forged_payload = base64.urlsafe_b64encode(json.dumps(forged).encode()).decode().rstrip("=")
    assert "not a cursor" in refused(f"{forged_payload}.{mac}")
    assert "not a cursor" in refused(token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert "not a cursor" in refused("garbage")
    assert "not a cursor" in refused("a.b.c")
    assert "not a cursor" in refused("é.é")
    assert "not a cursor" in refused(token, codec=CursorCodec(b"other" * 8, clock=clock))
    assert "other filters" in refused(token, filters_digest("events", {"user_id": "bob"}))
    assert "other filters" in refused(token, filters_digest("records", {"user_id": "alice"}))
    clock.now += 61
    assert "expired" in refused(token)


def test_cursor_and_page_do_not_mix() -> None:
    codec = CursorCodec(SECRET)
    token = codec.encode(filters_digest("events", {}), 10, 2)
    assert parse_event_query([("cursor", token)], codec).before_id == 10
    with pytest.raises(QueryError) as raised:
        parse_event_query([("cursor", token), ("page", "2")], codec)
    assert raised.value.parameter == "page"


@pytest.mark.parametrize(("items", "parameter", "message"), [
    ([("from", "2024-13-01T00:00:00Z")], "from", "ISO 8601"),
    ([("to", "2024-01-01")], "to", "time zone"),
    ([("from", "2024-01-02T00:00:00Z"), ("to", "2024-01-01T00:00:00Z")], "from", "after"),
    ([("limit", "-5")], "limit", "whole number from 1 to 200"),
    ([("limit", "1e3")], "limit", "whole number"),
    ([("limit", "٣")], "limit", "whole number"),  # an Arabic-Indic digit
    ([("bogus", "1")], "bogus", "unknown parameter"),
    ([("\x00" * 80, "1")], "?" * 40 + "...", "unknown parameter"),
    ([("table", "a\nb")], "table", "control characters"),
    ([("kind", "DATA")], "kind", "one of data, auth, admin, access"),
    ([("user_id", "x" * 2000)], "user_id", "at most 1024"),
])
def test_bad_event_queries(items: list[tuple[str, str]], parameter: str, message: str) -> None:
    with pytest.raises(QueryError) as raised:
        parse_event_query(items, CursorCodec(SECRET))
    assert raised.value.parameter == parameter
    assert message in raised.value.message


def test_export_range() -> None:
    export = parse_export_range([("from", "2024-01-01T00:00:00Z"),
                                 ("to", "2024-01-01T00:00:00Z"), ("format", "csv")])
    assert (export.start, export.end, export.format) == (
        datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC), "csv")
    with pytest.raises(QueryError, match="to: is required"):
        parse_export_range([("from", "2024-01-01T00:00:00Z")])
