"""Helpers for the retention tests: old months of events, made without the clock."""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg

from audit_mw.capture.partitions import create_partition

UTC = dt.UTC


def month_range(year: int, month: int) -> tuple[dt.datetime, dt.datetime]:
    start = dt.datetime(year, month, 1, tzinfo=UTC)
    end = dt.datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def old_month(
    conn: psycopg.Connection[Any], year: int, month: int, rows: int, *, user: str,
    record_prefix: str | None = None,
) -> str:
    """A partition for the month, holding ``rows`` row changes at explicit old times."""
    start, end = month_range(year, month)
    name = create_partition(conn, start, end)
    add_rows(conn, start, rows, user=user, record_prefix=record_prefix or name)
    return name


def add_rows(conn: psycopg.Connection[Any], start: dt.datetime, rows: int, *, user: str,
             record_prefix: str) -> None:
    """Row changes written straight into the trail (as a superuser), a minute apart."""
    conn.execute(
        "INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name,"
        " record_id, new_values, app_user_id)"
        " SELECT %s::timestamptz + g * interval '1 minute', 'data', 'INSERT', 'public', 'items',"
        " %s || '-' || g, jsonb_build_object('n', g), %s"
        " FROM generate_series(1, %s) AS g",
        [start, record_prefix, user, rows])


def count(conn: psycopg.Connection[Any], query: str, params: list[Any] | None = None) -> int:
    row = conn.execute(query, params or []).fetchone()
    assert row is not None
    return int(row[0])


def partition_names(conn: psycopg.Connection[Any]) -> set[str]:
    return {str(r[0]) for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit.events'::regclass")}
