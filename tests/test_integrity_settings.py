"""The chain's bytes do not depend on the session: sealing and verifying pin what they use.

A corpus of events with values whose text forms depend on settings (timestamps near
midnight and the year's end, numbers in jsonb, inet, arrays) is sealed in rounds, each round
under another combination of TimeZone (POSIX zones included), DateStyle, IntervalStyle,
extra_float_digits and search_path; after every round, verification under every combination
must say "valid", and the chain's entry hashes must be those sealed.
"""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw.integrity import KeyRing, seal, verify
from tests._admin import insert_events

pytestmark = pytest.mark.db

KEYS = KeyRing.build({"k1": b"k" * 32}, current_kid="k1")

#: Session settings a connection may carry (PGTZ, PGDATESTYLE, ALTER ROLE ... SET, a pooler).
SETTINGS: list[dict[str, str]] = [
    {},
    {"TimeZone": "UTC+14"},
    {"TimeZone": "UTC-12"},
    {"TimeZone": "EST5EDT"},
    {"TimeZone": "Pacific/Kiritimati", "DateStyle": "SQL, DMY"},
    {"TimeZone": "America/St_Johns", "DateStyle": "German, DMY"},
    {"DateStyle": "Postgres, MDY", "IntervalStyle": "sql_standard"},
    {"IntervalStyle": "iso_8601", "extra_float_digits": "-15"},
    {"extra_float_digits": "3", "TimeZone": "Asia/Kathmandu"},
    {"search_path": "public, pg_catalog", "TimeZone": "UTC+14", "DateStyle": "SQL, DMY"},
    {"TimeZone": "<+0545>-5:45", "IntervalStyle": "postgres_verbose",
     "extra_float_digits": "0"},
]

CORPUS: list[dict[str, Any]] = [
    {"occurred_at": "2024-12-31T23:59:59.999999Z", "new_values": '{"f": 0.1, "g": 1e300}'},
    {"occurred_at": "2025-01-01T00:00:00Z", "old_values": '{"n": 1.50, "neg": -0.0}',
     "client_ip": "2001:db8::1"},
    {"occurred_at": "2024-03-10T02:30:00-05:00", "changed_fields": ["a", None]},
    {"occurred_at": "1999-12-31T10:00:00+14:00", "client_ip": "10.1.2.0/24",
     "metadata": '{"at": "2024-01-01 00:00:00+00", "ms": 12.345678901234567}'},
    {"occurred_at": "infinity", "record_id": "∞"},
    {"occurred_at": "0044-03-15T12:00:00Z", "app_user_id": "caesar"},
]


def _settle(conn: psycopg.Connection[Any], settings: dict[str, str]) -> None:
    conn.execute("RESET ALL")
    for name, value in settings.items():
        conn.execute(sql.SQL("SELECT pg_catalog.set_config({}, {}, false)").format(
            sql.Literal(name), sql.Literal(value)))


def _chain(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT position, content_hash, entry_hash FROM audit.chain ORDER BY position"
    ).fetchall()


def test_seal_and_verify_give_the_same_bytes_under_any_session_settings(
    conn: psycopg.Connection[Any],
) -> None:
    # A schema before pg_catalog with a look-alike of an operator the statements use.
    conn.execute("CREATE OR REPLACE FUNCTION public.shadow_concat(bytea, bytea) RETURNS bytea "
                 "LANGUAGE sql IMMUTABLE AS 'SELECT $2 || $1'")
    conn.execute("CREATE OPERATOR public.|| (LEFTARG = bytea, RIGHTARG = bytea, "
                 "FUNCTION = public.shadow_concat)")
    sealed: list[tuple[Any, ...]] = []
    for round_no, settings in enumerate(SETTINGS):
        _settle(conn, {})
        insert_events(conn, [{**row, "app_user_id": f"r{round_no}"} for row in CORPUS])
        _settle(conn, settings)
        result = seal(conn, KEYS, batch_size=4)
        assert result.sealed == len(CORPUS), settings
        _settle(conn, {})
        chain = _chain(conn)
        assert chain[: len(sealed)] == sealed, f"earlier entries changed under {settings}"
        sealed = chain
        for verifying in SETTINGS:
            _settle(conn, verifying)
            checked = verify(conn, KEYS)
            assert checked.valid, (settings, verifying, checked)
            assert checked.checked == len(sealed)
    _settle(conn, {})
    assert len(sealed) == len(CORPUS) * len(SETTINGS)
