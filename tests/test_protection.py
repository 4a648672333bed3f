"""The trail cannot be edited by the application, and SECURITY DEFINER code cannot be hijacked."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from audit_mw.capture.tracking import track
from tests._db import audit_rows

Conn = psycopg.Connection[Any]


@pytest.fixture
def tracked(conn: Conn) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("GRANT ALL ON notes TO audit_mw_test_app")
    track(conn, "notes")
    conn.execute("INSERT INTO notes VALUES (1, 'first')")


@pytest.mark.parametrize("statement", [
    "UPDATE audit.events SET app_user_id = 'someone else'",
    "DELETE FROM audit.events",
    "TRUNCATE audit.events",
    "INSERT INTO audit.events (kind, action, table_name) VALUES ('data', 'INSERT', 'notes')",
    "UPDATE audit.tracked_tables SET excluded = '{body}'",
])
def test_app_role_cannot_change_the_trail(app_dsn: str, tracked: None, statement: str) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app, pytest.raises(
        psycopg.errors.InsufficientPrivilege, match="permission denied"
    ):
        app.execute(statement)


@pytest.mark.parametrize("statement", [
    "UPDATE audit.events SET app_user_id = 'someone else'",
    "DELETE FROM audit.events WHERE id = 1",
    "TRUNCATE audit.events",
])
def test_even_the_owner_gets_a_clear_error(conn: Conn, tracked: None, statement: str) -> None:
    conn.execute("SET ROLE audit_owner")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)
    conn.execute("RESET ROLE")
    assert len(audit_rows(conn, "notes")) == 1


def test_guards_hold_under_replica_mode(conn: Conn, tracked: None) -> None:
    conn.execute("SET session_replication_role = replica")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM audit.events")


def test_capture_holds_under_replica_mode(conn: Conn, tracked: None) -> None:
    # Even a superuser's session_replication_role = replica does not skip capture.
    conn.execute("SET session_replication_role = replica")
    conn.execute("UPDATE notes SET body = 'as replica'")
    conn.execute("INSERT INTO notes VALUES (2, 'two')")
    conn.execute("DELETE FROM notes WHERE id = 2")
    conn.execute("RESET session_replication_role")
    actions = [r["action"] for r in audit_rows(conn, "notes")]
    assert actions == ["INSERT", "UPDATE", "INSERT", "DELETE"]


def test_app_role_writes_are_captured_and_attributed_to_its_db_role(
    app_dsn: str, conn: Conn, tracked: None
) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        app.execute("UPDATE notes SET body = 'edited' WHERE id = 1")
    last = audit_rows(conn, "notes")[-1]
    assert (last["action"], last["db_role"]) == ("UPDATE", "audit_mw_test_app")


def test_app_role_does_not_own_the_audit_schema(conn: Conn) -> None:
    owners = conn.execute("""
        SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class
        WHERE relnamespace = 'audit'::regnamespace
        UNION SELECT DISTINCT pg_get_userbyid(proowner) FROM pg_proc
        WHERE pronamespace = 'audit'::regnamespace
        UNION SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = 'audit'
    """).fetchall()
    # audit_capture owns the capture functions (and nothing else; see test_escalation.py).
    assert sorted(owners) == [("audit_capture",), ("audit_owner",)]  # UNION has no order
    member = conn.execute(
        "SELECT pg_has_role('audit_mw_test_app', 'audit_owner', 'MEMBER')").fetchone()
    assert member == (False,)


def test_security_definer_functions_pin_search_path(conn: Conn) -> None:
    rows = conn.execute("""
        SELECT p.proname, p.proconfig, has_function_privilege('public', p.oid, 'EXECUTE')
        FROM pg_proc p WHERE p.pronamespace = 'audit'::regnamespace AND p.prosecdef
    """).fetchall()
    assert rows, "expected SECURITY DEFINER functions in the audit schema"
    for name, config, public_execute in rows:
        assert config == ["search_path=pg_catalog, pg_temp"], name
        assert public_execute is False, name


def test_search_path_hijack_runs_no_attacker_code(app_dsn: str, conn: Conn, tracked: None) -> None:
    # The app role plants look-alikes of functions and operators the triggers use, in public
    # and in its temporary schema, and puts them first on its search_path.
    with psycopg.connect(app_dsn, autocommit=True) as app:
        app.execute("CREATE TABLE public.pwned (what text)")
        for schema in ("public", "pg_temp"):
            for fn, args, ret in [
                ("to_jsonb", "anyelement", "jsonb"),
                ("current_setting", "text, boolean", "text"),
                ("left", "text, integer", "text"),
                ("jsonb_each", "jsonb", "TABLE(key text, value jsonb)"),
                ("pg_input_is_valid", "text, text", "boolean"),
                ("inet_client_addr", "", "inet"),
            ]:
                app.execute(f"""
                    CREATE FUNCTION {schema}.{fn}({args}) RETURNS {ret} LANGUAGE plpgsql AS $$
                    BEGIN INSERT INTO public.pwned VALUES ('{schema}.{fn}');
                    RETURN{"" if ret.startswith("TABLE") else " NULL"}; END $$
                """)
        app.execute("CREATE TABLE public.events (id int)")  # shadows an unqualified name
        app.execute("SET search_path = pg_temp, public, pg_catalog")
        # Control: the trap is live for code that does not pin its search_path.
        app.execute("SELECT to_jsonb(1)")
        assert app.execute("SELECT count(*) FROM public.pwned").fetchone() == (1,)
        app.execute("UPDATE notes SET body = 'x'")
        app.execute("INSERT INTO notes VALUES (2, 'y')")
        app.execute("DELETE FROM notes WHERE id = 2")
        app.execute("TRUNCATE notes")
        assert app.execute("SELECT count(*) FROM public.pwned").fetchone() == (1,)
    actions = [r["action"] for r in audit_rows(conn, "notes")]
    assert actions == ["INSERT", "UPDATE", "INSERT", "DELETE", "TRUNCATE"]


def test_no_session_setting_turns_capture_off(app_dsn: str, conn: Conn, tracked: None) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        for setting in ("audit.enabled", "audit.disable", "audit.skip"):
            app.execute("SELECT set_config(%s, 'off', false)", [setting])
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SET session_replication_role = replica")
        app.execute("UPDATE notes SET body = 'still captured'")
    assert audit_rows(conn, "notes")[-1]["new_values"]["body"] == "still captured"
