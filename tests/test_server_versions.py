"""One schema on PostgreSQL 15, 16, 17 and 18.

CI runs the database tests on each of these versions (``.ci/run``). The tests here pin what
differs between them: the input checks (pg_input_is_valid() from 16 on, a cast in an
exception block on 15: the same answers), the ids of the partitioned trail (a sequence
default on every version), and installs made from the released texts of the migrations that
were edited for 15 and 16 (17 and later: they upgrade in place; 15 and 16: those texts are
what failed there).
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw import _sql
from audit_mw.capture.schema import MIN_SERVER_VERSION, check_server_version, install, version_text
from audit_mw.capture.tracking import retrack, status, track
from audit_mw.errors import SchemaError
from audit_mw.integrity import seal, verify
from tests._db import set_context, track_before_0007
from tests._integrity import build_trail, hmac_keys
from tests.test_schema import _schema_snapshot

Conn = psycopg.Connection[Any]
KEYS = hmac_keys()

#: The released texts of the migrations edited for PostgreSQL 15 and 16, as they were shipped.
RELEASED = Path(__file__).resolve().parent / "released_migrations"


def server_version(conn: Conn) -> int:
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    assert row is not None
    return int(row[0])


# -- the version check ---------------------------------------------------------------------


@pytest.mark.parametrize(("number", "text"), [
    (150018, "15.18"), (160014, "16.14"), (180000, "18"), (140012, "14.12"),
    (100023, "10.23"), (90624, "9.6.24"),
])
def test_versions_print_as_people_write_them(number: int, text: str) -> None:
    assert version_text(number) == text


def test_an_older_server_is_refused_with_its_version_as_written() -> None:
    with pytest.raises(SchemaError) as refused:
        check_server_version(140012)
    assert str(refused.value) == "audit_mw needs PostgreSQL 15 or newer; this server is 14.12"
    for supported in (MIN_SERVER_VERSION, 150018, 160014, 170010, 180006):
        check_server_version(supported)


def test_the_server_under_test_is_supported(conn: Conn) -> None:
    # Installing on it worked (the fixture did); the check agrees.
    check_server_version(server_version(conn))
    assert server_version(conn) >= MIN_SERVER_VERSION


# -- the input checks ------------------------------------------------------------------------

INET_INPUTS = ["203.0.113.7", "10.0.0.0/8", "::1", "2001:db8::ff00:42:8329", "::ffff:1.2.3.4",
               "fe80::1/64", "1.2.3.4/32", "not an ip", "999.1.1.1", "1.2.3.4/33", "1.2.3",
               "2001:db8::g", "", " 1.2.3.4", "1.2.3.4 ", "1.2.3.4; DROP TABLE x",
               "0.0.0.0", "255.255.255.255", "256.1.1.1", "01.2.3.4", "1.2.3.04",  # noqa: S104
               "1.2.3.4.5", "\u0661.\u0662.\u0663.\u0664"]
JSONB_INPUTS = ['{}', '{"a": 1}', '[1, 2.50, null]', '"s"', '1e400', 'true', '{"a": }', '{',
                "{'a': 1}", '', '{"a": "\\u0000"}', '{"a": "\\ud83d"}', '{"a": 1} x', 'nul',
                '[' * 100 + ']' * 100, ' {}', '{} ', '{ }']


def _answers(conn: Conn, function: str, inputs: list[str]) -> list[bool | None]:
    return [conn.execute(sql.SQL("SELECT {}(%s)").format(sql.SQL(function)), [value])
            .fetchone()[0] for value in inputs]  # type: ignore[index]


@pytest.mark.parametrize(("kind", "inputs"), [("inet", INET_INPUTS), ("jsonb", JSONB_INPUTS)])
def test_input_checks_give_the_same_answers_on_every_path(
    conn: Conn, kind: str, inputs: list[str]
) -> None:
    by_cast = _answers(conn, f"audit.{kind}_parses", inputs)
    used = _answers(conn, f"audit.valid_{kind}", inputs)
    # What the server itself accepts, asked the plain way.
    accepted = []
    for value in inputs:
        try:
            with conn.transaction():
                conn.execute(sql.SQL("SELECT %s::{}").format(sql.SQL(kind)), [value])
        except psycopg.DataError:
            accepted.append(False)
        else:
            accepted.append(True)
    assert by_cast == used == accepted
    assert True in accepted
    assert False in accepted
    if server_version(conn) >= 160000:
        native = [conn.execute(f"SELECT pg_input_is_valid(%s, '{kind}')", [v]).fetchone()[0]  # type: ignore[index]
                  for v in inputs]
        assert native == accepted
    # NULL stays NULL on every path (the context reader relies on it).
    assert _answers(conn, f"audit.{kind}_parses", [None]) == [None]  # type: ignore[list-item]
    assert _answers(conn, f"audit.valid_{kind}", [None]) == [None]  # type: ignore[list-item]


def test_the_cheaper_check_is_used_where_the_server_has_it(conn: Conn) -> None:
    bodies = dict(conn.execute(
        "SELECT p.proname, p.prosrc FROM pg_proc AS p WHERE p.pronamespace = 'audit'::regnamespace"
        " AND p.proname IN ('valid_inet', 'valid_jsonb')").fetchall())
    native = server_version(conn) >= 160000
    for name, body in bodies.items():
        assert ("pg_input_is_valid" in body) is native, (name, body)
        assert ("_parses" in body) is not native, (name, body)
    if native:
        # Inlined into the context reader: the plan calls pg_input_is_valid() itself.
        plan = conn.execute(
            "EXPLAIN (VERBOSE, COSTS OFF) SELECT (audit.read_context()).*").fetchall()
        assert "pg_input_is_valid" in "\n".join(str(r[0]) for r in plan)


def test_malformed_context_is_stored_safely_on_every_path(conn: Conn) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    track(conn, "notes")
    set_context(conn, user_id="alice", ip_address="999.1.1.1", extra='{"a": ')
    conn.execute("INSERT INTO notes VALUES (1, 'x')")
    set_context(conn, ip_address="2001:db8::1", extra='{"a": 1}')
    conn.execute("INSERT INTO notes VALUES (2, 'y')")
    rows = conn.execute("SELECT host(client_ip), context_extra, context_issues FROM audit.events"
                        " WHERE table_name = 'notes' ORDER BY id").fetchall()
    assert rows == [(None, None, ["client_ip_invalid", "extra_invalid"]),
                    ("2001:db8::1", {"a": 1}, None)]
    event_id = uuid.uuid4()
    conn.execute("SELECT audit.log_event(%s, 'auth', 'login', true, NULL, 'bob', 'nonsense',"
                 " NULL, NULL, NULL, NULL, NULL, NULL)", [event_id])
    stored = conn.execute("SELECT client_ip, context_issues FROM audit.events"
                          " WHERE event_id = %s", [event_id]).fetchone()
    assert stored == (None, ["client_ip_invalid"])


# -- ids across partitions -------------------------------------------------------------------


def test_every_partition_takes_its_ids_from_the_one_sequence(conn: Conn) -> None:
    conn.execute("SELECT audit.create_partition('2019-01-01', '2019-02-01')")
    assert _id_defaults(conn) >= {"events", "events_default", "events_p201901"}
    # Written straight into partitions (as the owner could), the ids still never repeat.
    conn.execute("INSERT INTO audit.events_p201901 (occurred_at, kind, action)"
                 " VALUES ('2019-01-05', 'data', 'INSERT')")
    conn.execute("INSERT INTO audit.events_default (occurred_at, kind, action)"
                 " VALUES ('1999-01-05', 'data', 'INSERT')")
    conn.execute("INSERT INTO audit.events (kind, action) VALUES ('data', 'INSERT')")
    ids = [r[0] for r in conn.execute("SELECT id FROM audit.events ORDER BY id").fetchall()]
    assert len(ids) == len(set(ids)) == 3


def _id_defaults(conn: Conn) -> set[str]:
    """The tables of the trail, each checked to take its ids from the sequence."""
    defaults = conn.execute("""
        SELECT c.relname, pg_get_expr(d.adbin, d.adrelid), a.attidentity::text
        FROM pg_partition_tree('audit.events') AS t
        JOIN pg_class AS c ON c.oid = t.relid
        JOIN pg_attribute AS a ON a.attrelid = c.oid AND a.attname = 'id'
        LEFT JOIN pg_attrdef AS d ON d.adrelid = c.oid AND d.adnum = a.attnum
        ORDER BY 1""").fetchall()
    for name, default, identity in defaults:
        assert default == "nextval('audit.events_id_seq'::regclass)", name
        assert identity == "", name
    return {str(name) for name, _, _ in defaults}


# -- installs made from the released texts ---------------------------------------------------


def test_accepted_checksums_are_those_of_the_released_texts() -> None:
    by_version = {m.version: m for m in _sql.migrations()}
    kept = sorted(RELEASED.glob("*.sql"))
    assert [p.name[:4] for p in kept] == ["0001", "0002", "0006"]
    for path in kept:
        migration = by_version[int(path.name[:4])]
        released = hashlib.sha256(path.read_bytes()).hexdigest()
        assert path.name == f"{migration.version:04d}_{migration.name}.sql"
        assert released != migration.checksum  # edited...
        assert migration.accepted_checksums == {migration.checksum, released}  # ...and named
    others = [m for m in _sql.migrations() if m.version not in {1, 2, 6}]
    assert all(m.accepted_checksums == {m.checksum} for m in others)


def _released_text(migration: _sql.Migration) -> str:
    path = RELEASED / f"{migration.version:04d}_{migration.name}.sql"
    return path.read_text(encoding="utf-8") if path.exists() else migration.text


def _install_released(conn: Conn, up_to: int) -> None:
    """The audit schema as the releases before this one installed it, up to ``up_to``."""
    conn.execute("CREATE SCHEMA audit AUTHORIZATION audit_owner")
    conn.execute("SET ROLE audit_owner")
    conn.execute(_sql.query("install", "create_migrations_table"))
    with conn.transaction():
        for migration in _sql.migrations():
            if migration.version > up_to:
                break
            text = _released_text(migration)
            conn.execute(sql.SQL(text))  # type: ignore[arg-type]
            conn.execute(_sql.query("install", "record_migration"), {
                "version": migration.version, "name": migration.name,
                "checksum": hashlib.sha256(text.encode()).hexdigest()})
    conn.execute("RESET ROLE")


def test_an_install_from_the_released_texts_upgrades_in_place(
    empty_dsn: str, dsn: str, template_db: str
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        if server_version(conn) < 170000:
            # What the edit is for: the released 0006 refuses this server (and on 15 the
            # released 0001 does not even create its context reader).
            expected = (psycopg.errors.UndefinedFunction if server_version(conn) < 160000
                        else psycopg.errors.FeatureNotSupported)
            with pytest.raises(expected):
                _install_released(conn, 7)
            return
        _install_released(conn, 7)
        build_trail(conn, 300, tracker=track_before_0007)
        event_id = uuid.uuid4()
        conn.execute("SELECT audit.log_event(%s, 'auth', 'login', true, NULL, 'alice',"
                     " '203.0.113.9', NULL, NULL, NULL, NULL, NULL, NULL)", [event_id])
        seal(conn, KEYS)
        conn.execute("UPDATE items SET price = price * 2")  # rows left unsealed
        events = conn.execute("SELECT * FROM audit.events ORDER BY id").fetchall()
        chain = conn.execute("SELECT * FROM audit.chain ORDER BY position").fetchall()
        checkpoints = conn.execute("SELECT * FROM audit.checkpoints ORDER BY seq").fetchall()
        last_id = events[-1][0]

        result = install(conn)

        assert len(_id_defaults(conn)) > 2
        assert result.applied == tuple(m.version for m in _sql.migrations() if m.version > 7)
        assert conn.execute("SELECT * FROM audit.events ORDER BY id").fetchall() == events
        assert conn.execute("SELECT * FROM audit.chain ORDER BY position").fetchall() == chain
        assert conn.execute(
            "SELECT * FROM audit.checkpoints ORDER BY seq").fetchall() == checkpoints
        assert verify(conn, KEYS).status == "valid_unanchored"
        seal(conn, KEYS)
        assert verify(conn, KEYS).status == "valid_unanchored"
        # Ids go on after the last one, from the sequence; the event id stays taken.
        conn.execute("INSERT INTO items VALUES (424242, 'new', 1, '{}', '{}')")
        assert conn.execute("SELECT max(id) FROM audit.events").fetchone() == (last_id + 1,)
        again = conn.execute(
            "SELECT created FROM audit.log_event(%s, 'auth', 'login', true, NULL, 'alice',"
            " NULL, NULL, NULL, NULL, NULL, NULL, NULL)", [event_id]).fetchone()
        assert again == (False,)
        retrack(conn)
        assert status(conn).ok, status(conn).problems
        upgraded = _snapshot(conn)
    with psycopg.connect(dsn) as fresh:
        assert upgraded == _snapshot(fresh)


def _snapshot(conn: Conn) -> list[tuple[Any, ...]]:
    """The schema snapshot of test_schema, with column defaults, identities and sequences."""
    extra = conn.execute("""
        SELECT 'default', c.relname || '.' || a.attname,
               coalesce(pg_get_expr(d.adbin, d.adrelid), '') || '/' || a.attidentity::text
        FROM pg_attribute AS a JOIN pg_class AS c ON c.oid = a.attrelid
        LEFT JOIN pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE c.relnamespace = 'audit'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relkind IN ('r', 'p') AND c.relname NOT LIKE 'events\\_p2%'
          AND c.relname <> 'schema_migrations'
        UNION ALL
        SELECT 'sequence', s.seqrelid::regclass::text, coalesce(
            (SELECT d.refobjid::regclass::text || '.' || d.refobjsubid FROM pg_depend AS d
             WHERE d.objid = s.seqrelid AND d.deptype IN ('a', 'i')), '')
        FROM pg_sequence AS s JOIN pg_class AS c ON c.oid = s.seqrelid
        WHERE c.relnamespace = 'audit'::regnamespace
        ORDER BY 1, 2, 3""").fetchall()
    # Monthly partitions depend on when the data was written; the rest must be equal.
    base = [r for r in _schema_snapshot(conn) if "events_p2" not in str(r)]
    return base + extra
