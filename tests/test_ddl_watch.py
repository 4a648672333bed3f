"""DDL on tracked tables and on the trail is on the timeline, where event triggers can be
created (a superuser installs); capture triggers and guards cannot be disabled or dropped by
the roles audited. Without event triggers, install and status say that DDL is not watched."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw.capture.schema import install
from audit_mw.capture.tracking import status, track, untrack
from tests.conftest import Cluster

Conn = psycopg.Connection[Any]
OWNER = "audit_mw_test_owner"


@pytest.fixture
def watched(cluster: Cluster, dsn: str, database: str) -> str:
    """The table owner's DSN, in a database whose DDL is watched; it owns app.t (tracked)."""
    with cluster.admin() as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [OWNER]).fetchone():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(OWNER)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert install(conn).ddl_watched
        conn.execute(sql.SQL("CREATE SCHEMA app; GRANT USAGE, CREATE ON SCHEMA app TO {}")
                     .format(sql.Identifier(OWNER)))
    owner_dsn = cluster.dsn(database, user=OWNER)
    with psycopg.connect(owner_dsn, autocommit=True) as own:
        own.execute("CREATE TABLE app.t (id int PRIMARY KEY, note text)")
    with psycopg.connect(dsn, autocommit=True) as conn:
        track(conn, "app.t")
    return owner_dsn


def _ddl_events(conn: Conn) -> list[tuple[Any, ...]]:
    return conn.execute("""
        SELECT action, db_role, resource_type, resource_id, table_name FROM audit.events
        WHERE kind = 'ddl' ORDER BY id""").fetchall()


@pytest.mark.parametrize("statement", [
    "ALTER TABLE app.t DISABLE TRIGGER audit_mw_insert",
    "ALTER TABLE app.t DISABLE TRIGGER USER",
    "ALTER TABLE app.t ENABLE TRIGGER audit_mw_update",  # origin only: skipped as replica
    "ALTER TABLE app.t ENABLE REPLICA TRIGGER audit_mw_delete",
    "DROP TRIGGER audit_mw_insert ON app.t",
])
def test_the_table_owner_cannot_disable_or_drop_capture(
    watched: str, conn: Conn, statement: str
) -> None:
    with psycopg.connect(watched, autocommit=True) as own, pytest.raises(
        psycopg.errors.InsufficientPrivilege, match=r"capture trigger .* (must stay ENABLE "
                                                    r"ALWAYS|may not be dropped)"):
        own.execute(statement)
    assert status(conn).tables[0].ok


def test_column_rename_add_and_table_drop_are_one_event_each(watched: str, conn: Conn) -> None:
    before = len(_ddl_events(conn))
    with psycopg.connect(watched, autocommit=True) as own:
        own.execute("ALTER TABLE app.t RENAME COLUMN note TO remark")
        own.execute("ALTER TABLE app.t ADD COLUMN extra int")
        own.execute("CREATE TABLE app.untracked (id int)")  # not recorded: not tracked
        own.execute("DROP TABLE app.untracked")
        own.execute("DROP TABLE app.t")
    events = _ddl_events(conn)[before:]
    assert [(e[0], e[1]) for e in events] == [
        ("ALTER TABLE", OWNER), ("ALTER TABLE", OWNER), ("DROP TABLE", OWNER)]
    assert events[0][2:] == ("table column", "app.t.remark", "t")
    assert events[2][3] == "app.t"


def test_create_cast_and_changes_in_the_audit_schema_are_recorded(
    watched: str, conn: Conn
) -> None:
    with psycopg.connect(watched, autocommit=True) as own:
        own.execute("CREATE TYPE app.e AS ENUM ('a')")
        own.execute("CREATE FUNCTION app.e_text(app.e) RETURNS text LANGUAGE sql "
                    "AS 'SELECT ''x'''")
        own.execute("CREATE CAST (app.e AS text) WITH FUNCTION app.e_text(app.e)")
    conn.execute("SET ROLE audit_owner")
    conn.execute("CREATE FUNCTION audit.extra() RETURNS int LANGUAGE sql AS 'SELECT 1'")
    conn.execute("RESET ROLE")
    events = _ddl_events(conn)
    assert events[-2][:3] == ("CREATE CAST", OWNER, "cast")
    assert events[-1][:4] == ("CREATE FUNCTION", "postgres", "function", "audit.extra()")


def test_the_audit_owner_cannot_disable_or_drop_a_guard(
    watched: str, app_dsn: str, conn: Conn
) -> None:
    conn.execute("GRANT audit_owner TO audit_mw_test_app")
    with psycopg.connect(app_dsn, autocommit=True) as dba:
        dba.execute("SET ROLE audit_owner")
        for statement in ("ALTER TABLE audit.events DISABLE TRIGGER events_append_only",
                          "ALTER TABLE audit.chain DISABLE TRIGGER chain_append_only",
                          "ALTER TABLE audit.events_default ENABLE REPLICA TRIGGER "
                          "events_no_truncate",
                          "DROP TRIGGER events_server_truth ON audit.events"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="guard"):
                dba.execute(statement)
    conn.execute("REVOKE audit_owner FROM audit_mw_test_app")
    assert status(conn).ok


def test_the_audit_owner_may_still_track_and_untrack(watched: str, conn: Conn) -> None:
    conn.execute("GRANT audit_owner TO audit_mw_test_app")
    conn.execute("GRANT ALL ON SCHEMA app TO audit_mw_test_app")
    conn.execute("ALTER TABLE app.t OWNER TO audit_mw_test_app")
    with psycopg.connect(watched.replace(OWNER, "audit_mw_test_app"), autocommit=True) as app:
        untrack(app, "app.t")
        track(app, "app.t")
    conn.execute("REVOKE audit_owner FROM audit_mw_test_app")
    assert status(conn).ok


def test_without_event_triggers_status_says_ddl_is_not_watched(conn: Conn) -> None:
    # The suite's databases are installed with watch_ddl=False.
    result = status(conn)
    assert result.ok
    assert result.notes[0].startswith("DDL is not watched")


def test_with_event_triggers_status_has_no_such_note(watched: str, conn: Conn) -> None:
    assert status(conn).notes == ()
