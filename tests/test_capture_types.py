"""Capture never breaks a business write on data PostgreSQL accepted: every built-in type,
and json values that jsonb cannot hold (the escape \\u0000, a lone surrogate)."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw.capture.tracking import retrack, status, track
from tests._db import audit_rows

Conn = psycopg.Connection[Any]

#: Tried in order, as text input, until one is accepted by the type.
CANDIDATES = [
    "1", "t", "a", "2026-01-02", "2026-01-02 03:04:05+00", "03:04:05", "03:04:05+02",
    "1 day", "(1,2)", "((1,2),(3,4))", "[(1,2),(3,4)]", "<(1,2),3>", "{1,2,3}", "1.2.3.4",
    "08:00:2b:01:02:03", "08:00:2b:01:02:03:04:05", "'a' & 'b'", "a:1", "{}", "[1,2)",
    "{[1,2)}", "10:20:", "0/16B3748", "=r/postgres", "1 2", "\\x00ff", "pg_class",
    "pg_catalog.now()", "integer", "=", "+(integer,integer)", "simple", "english", "postgres",
    "pg_catalog", "plpgsql", "C", "{\"a\": 1}", "$.a", "(0,1)", "0",
    "[2026-01-01,2026-02-01)", "{[2026-01-01,2026-02-01)}",
    "00000000-0000-0000-0000-000000000001", "<a>x</a>",
]

#: Built-in types that no text input creates (they exist only as values the server makes).
NO_INPUT = {"pg_node_tree", "pg_ndistinct", "pg_dependencies", "pg_mcv_list",
            "pg_brin_bloom_summary", "pg_brin_minmax_multi_summary", "gtsvector", "unknown",
            "pg_ddl_command"}


def _samples(conn: Conn) -> dict[str, str]:
    """A sample literal for every built-in base type a column can have."""
    types = [r[0] for r in conn.execute("""
        SELECT t.typname FROM pg_type t
        WHERE t.oid < 16384 AND t.typtype IN ('b', 'r', 'm') AND t.typisdefined
          AND t.typcategory NOT IN ('P') AND t.typelem = 0 OR t.typname IN ('point', 'name',
          'int2vector', 'oidvector', 'box', 'lseg', 'line')
        ORDER BY 1""").fetchall()]
    samples: dict[str, str] = {}
    for name in types:
        if name in NO_INPUT:
            continue
        for candidate in CANDIDATES:
            try:
                with conn.transaction():
                    conn.execute(sql.SQL("CREATE TEMP TABLE probe (v pg_catalog.{}) ON COMMIT DROP")
                                 .format(sql.Identifier(name)))
                    conn.execute(sql.SQL("INSERT INTO probe VALUES (%s::text::pg_catalog.{})")
                                 .format(sql.Identifier(name)), [candidate])
            except psycopg.Error:
                continue
            samples[name] = candidate
            break
    return samples


def test_every_built_in_type_is_captured_tracked_and_excluded(conn: Conn) -> None:
    samples = _samples(conn)
    every = {r[0] for r in conn.execute("""
        SELECT t.typname FROM pg_type t WHERE t.oid < 16384 AND t.typtype IN ('b', 'r', 'm')
          AND t.typisdefined AND t.typcategory <> 'P' AND t.typelem = 0""").fetchall()}
    no_input = set(NO_INPUT)
    try:
        with conn.transaction():
            conn.execute("SELECT '<a/>'::xml")
    except psycopg.errors.FeatureNotSupported:
        no_input.add("xml")  # a server built without libxml has no xml input
    assert every - set(samples) <= no_input, sorted(every - set(samples) - no_input)
    columns = sql.SQL(", ").join(
        sql.SQL("{} pg_catalog.{}").format(sql.Identifier(f"c_{n}"), sql.Identifier(n))
        for n in samples)
    for table, exclude in (("all_types", False), ("all_types_excluded", True)):
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, {})").format(
            sql.Identifier(table), columns))
        track(conn, table, exclude=[f"c_{n}" for n in samples] if exclude else [])
        insert = sql.SQL("INSERT INTO {} VALUES (1, {})").format(
            sql.Identifier(table),
            sql.SQL(", ").join(sql.SQL("%s::text::pg_catalog.{}").format(sql.Identifier(n))
                               for n in samples))
        conn.execute(insert, list(samples.values()))
        conn.execute(sql.SQL("UPDATE {} SET id = 2").format(sql.Identifier(table)))
        conn.execute(sql.SQL("DELETE FROM {}").format(sql.Identifier(table)))
        rows = audit_rows(conn, table)
        assert [r["action"] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
        if exclude:
            assert rows[0]["new_values"] == {"id": 1}
        else:
            assert set(rows[0]["new_values"]) == {"id", *(f"c_{n}" for n in samples)}
    assert status(conn).ok


@pytest.mark.parametrize("exclude", [False, True])
@pytest.mark.parametrize(("value", "kept"), [
    ('"\\u0000"', "\\u0000"),
    ('{"a": ["x\\u0000y", "\\\\u0000"]}', {"a": ["x\\u0000y", "\\u0000"]}),
    ('"\\ud800"', "\\ud800"),
])
def test_json_that_jsonb_cannot_hold_never_fails_the_write(
    conn: Conn, value: str, kept: object, exclude: bool
) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body json, note text)")
    track(conn, "docs", exclude=["body"] if exclude else [])
    conn.execute("INSERT INTO docs VALUES (1, %s, 'a'), (2, '{\"ok\": 1}', 'b')", [value])
    conn.execute("UPDATE docs SET note = 'c'")
    conn.execute("UPDATE docs SET body = %s WHERE id = 2", [value])
    conn.execute("DELETE FROM docs")
    rows = audit_rows(conn, "docs")
    assert [r["action"] for r in rows] == ["INSERT"] * 2 + ["UPDATE"] * 2 + (
        [] if exclude else ["UPDATE"]) + ["DELETE"] * 2, rows
    first = rows[0]["new_values"]
    images = [r["new_values"] for r in rows] + [r["old_values"] for r in rows]
    if exclude:
        assert first == {"id": 1, "note": "a"}
        assert "body" not in str(images)
        assert "escaped" not in str(images)
    else:
        # Kept as written: each escape jsonb cannot hold is stored as its text; flagged.
        assert first == {"id": 1, "note": "a", "body": kept, "audit_mw_escaped": True}
        assert rows[1]["new_values"] == {"id": 2, "note": "b", "body": {"ok": 1}}


def test_a_json_column_added_after_track_is_reported_until_retracked(conn: Conn) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY)")
    track(conn, "docs")
    conn.execute("ALTER TABLE docs ADD COLUMN body json")
    (table,) = status(conn).tables
    assert table.problems[0].startswith("a json column was added since track")
    retrack(conn)
    conn.execute("INSERT INTO docs VALUES (1, '\"\\u0000\"')")
    assert status(conn).ok
