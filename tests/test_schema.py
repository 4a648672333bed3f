"""install() and status(): idempotent installs, upgrades, and detection of tampering."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw import _sql
from audit_mw.capture.schema import install, installed_version
from audit_mw.capture.tracking import status, track
from audit_mw.errors import SchemaError

Conn = psycopg.Connection[Any]


def _schema_snapshot(conn: Conn) -> list[tuple[Any, ...]]:
    """Columns, functions, triggers and indexes of the audit schema, comparable as data."""
    return conn.execute("""
        SELECT 'column', c.relname || '.' || a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        WHERE c.relnamespace = 'audit'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname <> 'schema_migrations'
        UNION ALL
        SELECT 'function', p.oid::regprocedure::text, md5(pg_get_functiondef(p.oid))
        FROM pg_proc p WHERE p.pronamespace = 'audit'::regnamespace
        UNION ALL
        SELECT 'index', indexrelid::regclass::text, pg_get_indexdef(indexrelid)
        FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
        WHERE c.relnamespace = 'audit'::regnamespace
        UNION ALL
        SELECT 'trigger', t.tgname, pg_get_triggerdef(t.oid) || t.tgenabled::text
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE c.relnamespace = 'audit'::regnamespace AND NOT t.tgisinternal
        ORDER BY 1, 2, 3
    """).fetchall()


def test_install_is_idempotent(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        first = install(conn)
        snapshot = _schema_snapshot(conn)
        second = install(conn)
        assert first.applied == tuple(m.version for m in _sql.migrations())
        assert second.applied == ()
        assert _schema_snapshot(conn) == snapshot
        assert installed_version(conn) == _sql.migrations()[-1].version


def test_fresh_install_equals_migrations_applied_one_by_one(empty_dsn: str, dsn: str) -> None:
    # `dsn` was installed in one go (the template); `empty_dsn` gets each migration in order,
    # as an upgrade from every older version would.
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("CREATE SCHEMA audit AUTHORIZATION audit_owner")
        conn.execute("SET ROLE audit_owner")
        conn.execute(_sql.query("install", "create_migrations_table"))
        conn.execute("RESET ROLE")
        conn.commit()
        for migration in _sql.migrations():
            conn.execute("SET ROLE audit_owner")
            conn.execute(sql.SQL(migration.text))
            conn.execute(_sql.query("install", "record_migration"), {
                "version": migration.version, "name": migration.name,
                "checksum": migration.checksum})
            conn.execute("RESET ROLE")
            conn.commit()
            assert installed_version(conn) == migration.version
        result = install(conn)  # records hashes, grants; applies nothing
        assert result.applied == ()
        stepwise = _schema_snapshot(conn)
    with psycopg.connect(dsn) as conn:
        assert _schema_snapshot(conn) == stepwise


def test_install_upgrades_an_older_install(empty_dsn: str) -> None:
    """An install stopped at the previous version is brought up to date by install()."""
    migrations = _sql.migrations()
    older = migrations[:-1]
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("CREATE SCHEMA audit AUTHORIZATION audit_owner")
        conn.execute("SET ROLE audit_owner")
        conn.execute(_sql.query("install", "create_migrations_table"))
        for migration in older:
            conn.execute(sql.SQL(migration.text))
            conn.execute(_sql.query("install", "record_migration"), {
                "version": migration.version, "name": migration.name,
                "checksum": migration.checksum})
        conn.execute("RESET ROLE")
        conn.commit()
        assert installed_version(conn) == len(older)
        result = install(conn)
        assert result.applied == (migrations[-1].version,)
        assert installed_version(conn) == migrations[-1].version
        assert status(conn).ok


def test_edited_released_migration_is_refused(conn: Conn) -> None:
    conn.execute("UPDATE audit.schema_migrations SET checksum = 'edited' WHERE version = 1")
    with psycopg.connect(conn.info.dsn) as other, pytest.raises(SchemaError, match="differs"):
        install(other)


def test_status_reports_current_install(conn: Conn) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    track(conn, "t")
    result = status(conn)
    assert result.ok
    assert result.owner == "audit_owner"
    assert [(t.table, t.ok) for t in result.tables] == [("public.t", True)]


def test_status_is_independent_of_search_path(conn: Conn) -> None:
    conn.execute("CREATE SCHEMA app")
    conn.execute("CREATE TABLE app.t (id int PRIMARY KEY)")
    conn.execute("SET search_path = app, public")
    track(conn, "t")
    conn.execute("SET search_path = audit, pg_catalog")
    assert status(conn).ok
    conn.execute("SET search_path = app, audit, public")
    assert status(conn).ok
    # Tracking must not leave the pinned path behind in the caller's session.
    assert conn.execute("SHOW search_path").fetchone() == ("app, audit, public",)


@pytest.mark.parametrize(("tamper", "expected"), [
    ("ALTER TABLE t DISABLE TRIGGER audit_mw_update", "trigger audit_mw_update is disabled"),
    ("ALTER TABLE t DISABLE TRIGGER USER", "is disabled"),
    ("DROP TRIGGER audit_mw_insert ON t", "trigger audit_mw_insert is missing"),
    ("ALTER TABLE t ENABLE REPLICA TRIGGER audit_mw_delete", "fires only in replica mode"),
    ("DROP TRIGGER audit_mw_truncate ON t; CREATE TRIGGER audit_mw_truncate AFTER TRUNCATE ON t "
     "FOR EACH STATEMENT EXECUTE FUNCTION suppress_redundant_updates_trigger(); "
     "ALTER TABLE t ENABLE ALWAYS TRIGGER audit_mw_truncate",
     "differ from the ones audit_mw created"),
    ("ALTER TABLE t ENABLE TRIGGER audit_mw_insert", "fires only in origin mode"),
    ("DROP TABLE t", "no longer exists"),
])
def test_status_detects_tampered_triggers(conn: Conn, tamper: str, expected: str) -> None:
    conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    track(conn, "t")
    conn.execute(tamper)
    result = status(conn)
    assert not result.ok
    (table,) = result.tables
    assert any(expected in p for p in table.problems), table.problems


@pytest.mark.parametrize(("tamper", "expected"), [
    ("CREATE OR REPLACE FUNCTION audit.read_context() RETURNS audit.session_context "
     "LANGUAGE sql STABLE AS $$ SELECT NULL::audit.session_context $$",
     "function audit.read_context() differs"),
    ("CREATE FUNCTION audit.backdoor() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$",
     "function audit.backdoor() was not installed by audit_mw"),
    ("ALTER TABLE audit.events DISABLE TRIGGER events_append_only",
     "guard events_append_only on audit.events is disabled"),
    ("DROP TRIGGER events_no_truncate ON audit.events",
     "guard events_no_truncate on audit.events is missing"),
    ("ALTER TABLE audit.events ENABLE REPLICA TRIGGER events_append_only",
     "guard events_append_only on audit.events fires only in replica mode"),
    ("ALTER TABLE audit.events ENABLE TRIGGER events_append_only",
     "guard events_append_only on audit.events fires only in origin mode"),
    ("ALTER TABLE audit.checkpoints DISABLE TRIGGER checkpoints_append_only",
     "guard checkpoints_append_only on audit.checkpoints is disabled"),
])
def test_status_detects_tampered_schema(conn: Conn, tamper: str, expected: str) -> None:
    conn.execute(tamper)
    result = status(conn)
    assert not result.ok
    assert any(expected in p for p in result.problems), result.problems


def test_install_does_not_launder_a_changed_function(conn: Conn) -> None:
    conn.execute("CREATE OR REPLACE FUNCTION audit.read_context() RETURNS audit.session_context "
                 "LANGUAGE sql STABLE AS $$ SELECT NULL::audit.session_context $$")
    with psycopg.connect(conn.info.dsn) as other:
        install(other)  # nothing to upgrade: must not re-record the changed definition
        problems = status(other).problems
    assert any("function audit.read_context() differs" in p for p in problems), problems


def test_upgrade_over_a_changed_function_is_refused(conn: Conn) -> None:
    conn.execute("CREATE OR REPLACE FUNCTION audit.read_context() RETURNS audit.session_context "
                 "LANGUAGE sql STABLE AS $$ SELECT NULL::audit.session_context $$")
    conn.execute("DELETE FROM audit.schema_migrations WHERE version = "
                 "(SELECT max(version) FROM audit.schema_migrations)")
    with psycopg.connect(conn.info.dsn) as other, pytest.raises(
        SchemaError, match=r"refusing to upgrade: .*audit\.read_context\(\)"
    ):
        install(other)


def test_status_on_database_without_schema(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        result = status(conn)
    assert not result.ok
    assert result.problems == ("the audit schema is not installed",)


def test_track_without_schema_is_a_clear_error(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        with pytest.raises(SchemaError, match="audit-mw install"):
            track(conn, "t")


def test_install_without_createrole_owns_schema_itself(cluster: Any, empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True) as admin:
        admin.execute("DROP ROLE IF EXISTS audit_mw_test_plain")
        admin.execute("CREATE ROLE audit_mw_test_plain LOGIN")
        dbname = admin.info.dbname
        admin.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO audit_mw_test_plain").format(
            sql.Identifier(dbname)))
    try:
        with psycopg.connect(cluster.dsn(dbname, user="audit_mw_test_plain")) as conn:
            result = install(conn)
            assert result.owner == "audit_mw_test_plain"
            assert status(conn).owner == "audit_mw_test_plain"
            with pytest.raises(SchemaError, match="may create roles"):
                install(conn, writer_roles=["someone"])
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as admin:
            admin.execute("DROP SCHEMA IF EXISTS audit CASCADE")
            admin.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM audit_mw_test_plain").format(
                sql.Identifier(dbname)))
            admin.execute("DROP ROLE audit_mw_test_plain")
