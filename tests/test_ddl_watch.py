"""DDL on tracked tables and on the trail is on the timeline, where event triggers can be
created (a superuser installs); capture triggers and guards cannot be disabled or dropped by
the roles audited. Without event triggers, install and status say that DDL is not watched."""

from __future__ import annotations

import re
from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw.capture.schema import install
from audit_mw.capture.tracking import status, track, untrack
from tests._db import audit_rows
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


# -- partitions created or attached after track ------------------------------------------------

@pytest.fixture
def sales(watched: str, conn: Conn) -> str:
    """app.sales (partitioned by year, one partition), owned by the table owner and tracked
    with ``secret`` excluded; returns the owner's DSN."""
    with psycopg.connect(watched, autocommit=True) as own:
        own.execute(b"""
            CREATE TABLE app.sales (id int, year int, amount int, secret text,
                                    PRIMARY KEY (id, year)) PARTITION BY RANGE (year);
            CREATE TABLE app.sales_2026 PARTITION OF app.sales FOR VALUES FROM (2026) TO (2027);
        """)
    track(conn, "app.sales", exclude=["secret"])
    return watched


def _sales_rows(conn: Conn) -> list[tuple[Any, ...]]:
    return [(r["action"], r["record_id"], r["schema_name"])
            for r in audit_rows(conn, "sales")]


def test_a_partition_created_after_track_is_captured_from_its_first_row(
    sales: str, conn: Conn
) -> None:
    with psycopg.connect(sales, autocommit=True) as own:
        # Created and written in one transaction, straight at the partition; the setting
        # track uses to say it does the partitions itself is not believed of this role.
        with own.transaction():
            own.execute("SET LOCAL audit_mw.tracking = 'on'")
            own.execute("CREATE TABLE app.sales_2027 PARTITION OF app.sales "
                        "FOR VALUES FROM (2027) TO (2028)")
            own.execute("INSERT INTO app.sales_2027 VALUES (1, 2027, 10, 'canary-1')")
        with own.cursor().copy("COPY app.sales_2027 (id, year, amount, secret) FROM STDIN") as cp:
            cp.write_row((2, 2027, 20, "canary-2"))
        own.execute("UPDATE app.sales_2027 SET amount = amount + 1 WHERE id = 1")
        own.execute("INSERT INTO app.sales VALUES (3, 2027, 30, 'canary-3')")
        own.execute("DELETE FROM app.sales_2027 WHERE id = 2")
    assert _sales_rows(conn) == [
        ("INSERT", "[1, 2027]", "app"), ("INSERT", "[2, 2027]", "app"),
        ("UPDATE", "[1, 2027]", "app"), ("INSERT", "[3, 2027]", "app"),
        ("DELETE", "[2, 2027]", "app")]
    assert "canary" not in str(audit_rows(conn, "sales"))
    assert status(conn).ok


def test_an_attached_table_and_its_own_partitions_are_captured(sales: str, conn: Conn) -> None:
    with psycopg.connect(sales, autocommit=True) as own:
        # Column numbers differ from the parent's (a dropped column, another order), so the
        # excluded column is found by name, not by its number in the parent.
        own.execute(b"""
            CREATE TABLE app.sales_2028 (gone int, secret text, amount int,
                                         year int NOT NULL, id int NOT NULL)
                PARTITION BY RANGE (id);
            ALTER TABLE app.sales_2028 DROP COLUMN gone;
            CREATE TABLE app.sales_2028_low PARTITION OF app.sales_2028
                FOR VALUES FROM (0) TO (100);
            ALTER TABLE app.sales ATTACH PARTITION app.sales_2028
                FOR VALUES FROM (2028) TO (2029);
        """)
        own.execute("INSERT INTO app.sales_2028_low (id, year, amount, secret) "
                    "VALUES (1, 2028, 5, 'canary-low')")
        own.execute("INSERT INTO app.sales_2028 (id, year, amount, secret) "
                    "VALUES (2, 2028, 6, 'canary-mid')")
        own.execute("UPDATE app.sales_2028_low SET secret = 'canary-up', amount = 7 WHERE id = 1")
        with own.cursor().copy("COPY app.sales_2028 (id, year, amount, secret) FROM STDIN") as cp:
            cp.write_row((3, 2028, 8, "canary-copy"))
        own.execute("DELETE FROM app.sales_2028 WHERE id = 2")
    assert _sales_rows(conn) == [("INSERT", "[1, 2028]", "app"), ("INSERT", "[2, 2028]", "app"),
                                 ("UPDATE", "[1, 2028]", "app"), ("INSERT", "[3, 2028]", "app"),
                                 ("DELETE", "[2, 2028]", "app")]
    assert "canary" not in str(audit_rows(conn, "sales"))
    assert audit_rows(conn, "sales")[2]["changed_fields"] == ["amount"]
    assert status(conn).ok


def test_track_inside_a_longer_transaction_leaves_new_partitions_captured(
    watched: str, conn: Conn
) -> None:
    """track tells the event trigger to leave the partitions to it, for its own work only:
    a partition created later in the same transaction (a migration's) gets capture."""
    with conn.transaction():
        conn.execute("CREATE TABLE app.m (id int, y int, PRIMARY KEY (id, y)) "
                     "PARTITION BY RANGE (y)")
        track(conn, "app.m")
        conn.execute("CREATE TABLE app.m_1 PARTITION OF app.m FOR VALUES FROM (1) TO (2)")
        conn.execute("INSERT INTO app.m_1 VALUES (1, 1)")
    assert [r["record_id"] for r in audit_rows(conn, "m")] == ["[1, 1]"]
    assert status(conn).ok


def test_a_partition_with_a_hostile_name_is_captured(sales: str, conn: Conn) -> None:
    name = sql.Identifier("app", "sales_2030'; DROP TABLE app.sales; --\"é")
    with psycopg.connect(sales, autocommit=True) as own:
        own.execute(sql.SQL("CREATE TABLE {} PARTITION OF app.sales "
                            "FOR VALUES FROM (2030) TO (2031)").format(name))
        own.execute(sql.SQL("INSERT INTO {} VALUES (1, 2030, 1, 'canary')").format(name))
    assert _sales_rows(conn) == [("INSERT", "[1, 2030]", "app")]
    assert status(conn).ok


def test_a_partition_detached_disabled_and_attached_again_is_captured(
    sales: str, conn: Conn
) -> None:
    with psycopg.connect(sales, autocommit=True) as own:
        own.execute("ALTER TABLE app.sales DETACH PARTITION app.sales_2026")
        # No longer a partition of a tracked table: its owner may disable what it carries.
        own.execute("ALTER TABLE app.sales_2026 DISABLE TRIGGER audit_mw_insert")
        own.execute("ALTER TABLE app.sales ATTACH PARTITION app.sales_2026 "
                    "FOR VALUES FROM (2026) TO (2027)")
        own.execute("INSERT INTO app.sales_2026 VALUES (1, 2026, 1, 's')")
    assert _sales_rows(conn) == [("INSERT", "[1, 2026]", "app")]
    assert status(conn).ok


@pytest.mark.parametrize("planted", [
    # A trigger that takes capture's name but runs the owner's own function.
    "CREATE FUNCTION app.nothing() RETURNS trigger LANGUAGE plpgsql AS "
    "'BEGIN RETURN NULL; END'; CREATE TRIGGER audit_mw_insert AFTER INSERT ON app.sales_2029 "
    "FOR EACH STATEMENT EXECUTE FUNCTION app.nothing()",
    # The capture of another tracked table (recorded under that table's name).
    "SELECT 1",
])
def test_attaching_a_table_with_a_trigger_named_like_capture_is_refused(
    sales: str, conn: Conn, planted: str
) -> None:
    with psycopg.connect(sales, autocommit=True) as own:
        own.execute("CREATE TABLE app.sales_2029 (id int NOT NULL, year int NOT NULL, "
                    "amount int, secret text)")
        own.execute(planted.encode())
    if planted == "SELECT 1":
        track(conn, "app.sales_2029", allow_no_primary_key=True)
    match = "is not audit_mw's capture" if planted != "SELECT 1" else "carries the capture of"
    with psycopg.connect(sales, autocommit=True) as own, pytest.raises(
            psycopg.errors.DatabaseError, match=match):
        own.execute("ALTER TABLE app.sales ATTACH PARTITION app.sales_2029 "
                    "FOR VALUES FROM (2029) TO (2030)")
    assert conn.execute("SELECT count(*) FROM pg_inherits "
                        "WHERE inhrelid = 'app.sales_2029'::regclass").fetchone() == (0,)


def test_the_new_partitions_function_runs_nothing_another_role_can_change(
    watched: str, conn: Conn
) -> None:
    """It is owned by a superuser: it may read the catalog and call pg_catalog only. Any name
    in schema audit outside a string literal (a function, a table the schema owner could
    turn into a view calling its own code) would run with a superuser's rights."""
    owner, source = conn.execute(
        "SELECT r.rolsuper, p.prosrc FROM pg_proc AS p JOIN pg_roles AS r ON r.oid = p.proowner "
        "WHERE p.oid = 'audit.watch_partitions()'::regprocedure").fetchone()
    assert owner is True
    without_literals = re.sub(r"'(?:[^']|'')*'", "''", source)
    assert "audit." not in without_literals
    assert re.findall(r"\b([a-z_]+)\.([a-z_]+)\s*\(", without_literals)  # calls are qualified
    assert {schema for schema, _ in re.findall(r"\b([a-z_]+)\.([a-z_]+)\s*\(",
                                               without_literals)} == {"pg_catalog"}
