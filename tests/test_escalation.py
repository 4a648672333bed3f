"""The audited cannot reach the auditor: an escalation suite.

Every attack runs as ``audit_mw_test_owner``, a non-superuser role that owns its tracked
table and has CREATE on its schema (the deployment most applications have: the migrations'
or the application's role owns the tables). Each attempt plants code that, wherever it runs,
records the role it runs as and tries to escalate (create a function in schema ``audit``,
disable a guard, rewrite or forge audit rows, loosen a capture function). After each one:
no object appears in schema ``audit``, no audit row changes, every guard stays enabled, the
planted code never ran as anything but the attacker, and the business write is either
captured correctly or refused with a clear error, which ``status`` then reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw.capture.tracking import status, track
from audit_mw.errors import TrackingError
from tests.conftest import Cluster

Conn = psycopg.Connection[Any]

ATTACKER = "audit_mw_test_owner"

#: What the planted code tries, each step on its own so that one refusal stops nothing else.
ESCALATIONS = [
    "CREATE FUNCTION audit.backdoor() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'SELECT 1'",
    "ALTER TABLE audit.events DISABLE TRIGGER events_append_only",
    "UPDATE audit.events SET app_user_id = 'forged'",
    "DELETE FROM audit.events",
    "INSERT INTO audit.events (kind, action, table_name) VALUES ('data', 'INSERT', 'forged')",
    "ALTER FUNCTION audit.capture_insert() SECURITY INVOKER",
    "ALTER FUNCTION audit.capture_insert() SET search_path = public",
    "INSERT INTO audit.object_hashes VALUES ('audit.backdoor()', 'x')",
]

PAYLOAD = """
CREATE TABLE shop.ran (who text, via text);
GRANT INSERT ON shop.ran TO PUBLIC;
CREATE FUNCTION shop.payload(via text) RETURNS boolean LANGUAGE plpgsql AS $f$
DECLARE
    step text;
BEGIN
    INSERT INTO shop.ran VALUES (current_user, via);
    FOREACH step IN ARRAY {steps}::text[] LOOP
        BEGIN
            EXECUTE step;
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END LOOP;
    RETURN true;
END
$f$;
GRANT EXECUTE ON FUNCTION shop.payload(text) TO PUBLIC;
CREATE TYPE shop.mood AS ENUM ('calm', 'angry');
"""


@dataclass(frozen=True)
class Attempt:
    name: str
    setup: str  # run by the attacker
    write: str  # the business write, by the attacker
    outcome: str  # "captured" or "refused"


def _cast(source: str, target: str, value: str = "'\"x\"'") -> str:
    fn = f"shop.to_{target}_{source.rsplit('.', maxsplit=1)[-1].replace('[]', '_arr')}"
    return f"""
        CREATE FUNCTION {fn}(v {source}) RETURNS {target} LANGUAGE plpgsql AS $f$
        BEGIN PERFORM shop.payload('cast {source} as {target}'); RETURN {value}::{target}; END
        $f$;
        CREATE CAST ({source} AS {target}) WITH FUNCTION {fn}({source});
    """


ATTEMPTS = [
    *[Attempt(f"enum cast to {target}", _cast("shop.mood", target)
              + "ALTER TABLE shop.orders ADD COLUMN mood shop.mood;",
              "INSERT INTO shop.orders (id, status, mood) VALUES (2, 'new', 'calm')",
              "captured" if target == "text" else "refused")
      for target in ("json", "jsonb", "text")],
    *[Attempt(f"domain cast to {target}",
              "CREATE DOMAIN shop.dmood AS shop.mood;" + _cast("shop.dmood", target)
              + "ALTER TABLE shop.orders ADD COLUMN mood shop.dmood;",
              "INSERT INTO shop.orders (id, status, mood) VALUES (2, 'new', 'calm')",
              # A cast from a domain is never used (PostgreSQL says so); capture refuses it
              # all the same rather than reason about when it might be.
              "captured" if target == "text" else "refused")
      for target in ("json", "jsonb", "text")],
    *[Attempt(f"composite cast to {target}",
              "CREATE TYPE shop.pair AS (a int, m shop.mood);" + _cast("shop.pair", target)
              + _cast("shop.mood", target)
              + "ALTER TABLE shop.orders ADD COLUMN pair shop.pair;",
              "INSERT INTO shop.orders (id, status, pair) VALUES (2, 'new', ROW(1, 'calm'))",
              "captured" if target == "text" else "refused")
      for target in ("json", "jsonb", "text")],
    *[Attempt(f"array element cast to {target}", _cast("shop.mood", target)
              + "ALTER TABLE shop.orders ADD COLUMN moods shop.mood[];",
              "INSERT INTO shop.orders (id, status, moods) VALUES (2, 'new', '{calm,angry}')",
              "captured" if target == "text" else "refused")
      for target in ("json", "jsonb", "text")],
    Attempt("range cast to json",
            "CREATE TYPE shop.span AS RANGE (subtype = int4);" + _cast("shop.span", "json")
            + "ALTER TABLE shop.orders ADD COLUMN span shop.span;",
            "INSERT INTO shop.orders (id, status, span) VALUES (2, 'new', '[1,5)')", "refused"),
    Attempt("domain check calling plpgsql", """
        CREATE FUNCTION shop.check_it(v int) RETURNS boolean LANGUAGE plpgsql AS $f$
        BEGIN RETURN shop.payload('domain check'); END $f$;
        CREATE DOMAIN shop.checked AS int CHECK (shop.check_it(VALUE));
        ALTER TABLE shop.orders ADD COLUMN qty shop.checked;
    """, "INSERT INTO shop.orders (id, status, qty) VALUES (2, 'new', 3)", "captured"),
    Attempt("operator overload on a column type", """
        CREATE FUNCTION shop.mood_eq(a shop.mood, b shop.mood) RETURNS boolean
        LANGUAGE plpgsql AS $f$ BEGIN RETURN shop.payload('operator ='); END $f$;
        CREATE OPERATOR shop.= (LEFTARG = shop.mood, RIGHTARG = shop.mood,
                                FUNCTION = shop.mood_eq);
        CREATE OPERATOR shop.<> (LEFTARG = shop.mood, RIGHTARG = shop.mood,
                                 FUNCTION = shop.mood_eq);
        ALTER TABLE shop.orders ADD COLUMN mood shop.mood;
        SET search_path = shop, pg_catalog;
    """, "UPDATE shop.orders SET mood = 'angry', status = 'paid' WHERE id = 1", "captured"),
    Attempt("look-alike functions in the schema and pg_temp", """
        CREATE FUNCTION shop.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS $f$
        BEGIN PERFORM shop.payload('shop.to_jsonb'); RETURN '{}'; END $f$;
        CREATE FUNCTION pg_temp.to_jsonb(anyelement) RETURNS jsonb LANGUAGE plpgsql AS $f$
        BEGIN PERFORM shop.payload('pg_temp.to_jsonb'); RETURN '{}'; END $f$;
        CREATE FUNCTION shop.current_setting(text, boolean) RETURNS text LANGUAGE plpgsql
        AS $f$ BEGIN PERFORM shop.payload('shop.current_setting'); RETURN NULL; END $f$;
        CREATE FUNCTION shop.cardinality(anyarray) RETURNS int LANGUAGE plpgsql
        AS $f$ BEGIN PERFORM shop.payload('shop.cardinality'); RETURN 0; END $f$;
        CREATE TABLE shop.events (id int);
        SET search_path = pg_temp, shop, pg_catalog;
    """, "UPDATE shop.orders SET status = 'paid' WHERE id = 1", "captured"),
    Attempt("own triggers before and after capture", """
        CREATE FUNCTION shop.trig() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN PERFORM shop.payload('trigger ' || TG_NAME); RETURN NULL; END $f$;
        CREATE FUNCTION shop.row_trig() RETURNS trigger LANGUAGE plpgsql AS $f$
        BEGIN PERFORM shop.payload('trigger ' || TG_NAME); RETURN NEW; END $f$;
        CREATE TRIGGER aaa_before BEFORE INSERT ON shop.orders FOR EACH ROW
            EXECUTE FUNCTION shop.row_trig();
        CREATE TRIGGER aaa_after AFTER INSERT ON shop.orders FOR EACH STATEMENT
            EXECUTE FUNCTION shop.trig();
        CREATE TRIGGER zzz_after AFTER INSERT ON shop.orders FOR EACH STATEMENT
            EXECUTE FUNCTION shop.trig();
    """, "INSERT INTO shop.orders (id, status) VALUES (2, 'new')", "captured"),
    Attempt("column default calling a function", """
        CREATE FUNCTION shop.default_it() RETURNS int LANGUAGE plpgsql AS $f$
        BEGIN PERFORM shop.payload('default'); RETURN 7; END $f$;
        ALTER TABLE shop.orders ADD COLUMN qty int DEFAULT shop.default_it();
    """, "INSERT INTO shop.orders (id, status) VALUES (2, 'new')", "captured"),
]


@pytest.fixture
def attacker(cluster: Cluster, dsn: str, database: str) -> Iterator[str]:
    """The attacker's DSN: it owns shop.orders (tracked) and has CREATE on schema shop."""
    with cluster.admin() as admin:
        if not admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                             [ATTACKER]).fetchone():
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ATTACKER)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA shop; GRANT USAGE, CREATE ON SCHEMA shop TO {}")
                     .format(sql.Identifier(ATTACKER)))
    attacker_dsn = cluster.dsn(database, user=ATTACKER)
    with psycopg.connect(attacker_dsn, autocommit=True) as own:
        own.execute("CREATE TABLE shop.orders (id int PRIMARY KEY, status text, secret text)")
        own.execute("INSERT INTO shop.orders VALUES (1, 'new', 'hunter2')")
        own.execute(sql.SQL(PAYLOAD).format(steps=sql.Literal(ESCALATIONS)))
    with psycopg.connect(dsn, autocommit=True) as conn:
        track(conn, "shop.orders", exclude=["secret"])
    return attacker_dsn


def _fortress(conn: Conn) -> dict[str, Any]:
    """What must not change: the audit schema's objects, the trail, the guards."""
    return {
        "objects": conn.execute("""
            SELECT 'rel', relname, pg_get_userbyid(relowner), relacl::text FROM pg_class
            WHERE relnamespace = 'audit'::regnamespace AND NOT relispartition
            UNION ALL
            SELECT 'fn', p.oid::regprocedure::text, pg_get_userbyid(proowner),
                   md5(pg_get_functiondef(p.oid)) || coalesce(proacl::text, '')
            FROM pg_proc p WHERE pronamespace = 'audit'::regnamespace
            UNION ALL
            SELECT 'type', typname, pg_get_userbyid(typowner), '' FROM pg_type
            WHERE typnamespace = 'audit'::regnamespace
            ORDER BY 1, 2""").fetchall(),
        "rows": conn.execute("SELECT e::text FROM audit.events e ORDER BY id").fetchall(),
        "hashes": conn.execute("SELECT * FROM audit.object_hashes ORDER BY 1").fetchall(),
        "guards": conn.execute("""
            SELECT c.relname, t.tgname, t.tgenabled::text FROM pg_trigger t
            JOIN pg_class c ON c.oid = t.tgrelid
            WHERE c.relnamespace = 'audit'::regnamespace AND NOT t.tgisinternal
            ORDER BY 1, 2""").fetchall(),
    }


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.name for a in ATTEMPTS])
def test_escalation_attempt_is_contained(attacker: str, conn: Conn, attempt: Attempt) -> None:
    before = _fortress(conn)
    with psycopg.connect(attacker, autocommit=True) as own:
        own.execute(attempt.setup.encode())
        if attempt.outcome == "refused":
            with pytest.raises(psycopg.errors.InsufficientPrivilege,
                               match=r"capture of shop\.orders refused: column .* cast to json"):
                own.execute(attempt.write.encode())
        else:
            own.execute(attempt.write.encode())
        # Planted code ran, if at all, as the attacker only.
        ran_as = {r[0] for r in own.execute("SELECT who FROM shop.ran").fetchall()}
    assert ran_as <= {ATTACKER}, ran_as
    after = _fortress(conn)
    assert after["objects"] == before["objects"]
    assert after["hashes"] == before["hashes"]
    assert after["guards"] == before["guards"]
    assert all(state == "A" for _, _, state in after["guards"])
    new_rows = after["rows"][len(before["rows"]):]
    assert after["rows"][:len(before["rows"])] == before["rows"]
    if attempt.outcome == "refused":
        assert new_rows == []
        result = status(conn)
        assert not result.ok
        (table,) = result.tables
        assert any("cast to json" in p for p in table.problems), table.problems
    else:
        last = conn.execute(
            "SELECT action, record_id, new_values, db_role FROM audit.events "
            "WHERE table_name = 'orders' ORDER BY id DESC LIMIT 1").fetchone()
        assert last is not None
        action, record_id, new_values, db_role = last
        assert db_role == ATTACKER
        assert action == attempt.write.split()[0]
        expected = conn.execute(
            "SELECT to_jsonb(o) - 'secret' FROM shop.orders o WHERE id = %s::int",
            [record_id]).fetchone()
        assert expected is not None
        assert new_values == expected[0]
        assert "secret" not in new_values


def test_status_reports_the_unsafe_cast_and_track_refuses_it(attacker: str, conn: Conn) -> None:
    with psycopg.connect(attacker, autocommit=True) as own:
        own.execute(_cast("shop.mood", "json").encode())
        own.execute("CREATE TABLE shop.other (id int PRIMARY KEY, mood shop.mood)")
    with pytest.raises(TrackingError, match=r"column mood has type shop\.mood with a cast to json"):
        track(conn, "shop.other")


def test_capture_role_can_only_insert(conn: Conn) -> None:
    conn.execute("SET ROLE audit_capture")
    for statement in [*ESCALATIONS[:5], "CREATE TABLE audit.x (i int)",
                      "CREATE TABLE public.x (i int)", "SELECT * FROM audit.events"]:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(statement)
    conn.execute("RESET ROLE")
    member = conn.execute("""
        SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member
        WHERE r.rolname = 'audit_capture'""").fetchone()
    assert member == (0,)
    owns = conn.execute("""
        SELECT count(*) FROM pg_class WHERE relowner = 'audit_capture'::regrole""").fetchone()
    assert owns == (0,)


@pytest.mark.parametrize("tamper", [
    "ALTER FUNCTION audit.capture_insert() SECURITY INVOKER",
    "ALTER FUNCTION audit.capture_insert() SET search_path = public, pg_catalog",
    "ALTER FUNCTION audit.capture_insert() OWNER TO audit_owner",
])
def test_status_catches_what_the_capture_role_could_change(conn: Conn, tamper: str) -> None:
    conn.execute(tamper)
    result = status(conn)
    assert not result.ok
    assert any("audit.capture_insert()" in p for p in result.problems), result.problems


def test_status_catches_a_changed_function_even_with_rewritten_hashes(conn: Conn) -> None:
    conn.execute("""CREATE OR REPLACE FUNCTION audit.mask(row_image jsonb, masked text[])
        RETURNS jsonb LANGUAGE sql IMMUTABLE AS 'SELECT row_image'""")
    conn.execute("""UPDATE audit.object_hashes SET definition_hash =
        md5(pg_get_functiondef('audit.mask(jsonb, text[])'::regprocedure))
        WHERE object_name = 'audit.mask(jsonb,text[])'""")
    result = status(conn)
    assert "function audit.mask(jsonb,text[]) differs from what audit_mw ships (its body, " \
        "language, SECURITY DEFINER, settings or signature changed)" in result.problems


@pytest.mark.parametrize(("create", "expected"), [
    ("CREATE FUNCTION audit.backdoor() RETURNS int LANGUAGE sql AS 'SELECT 1'",
     "function audit.backdoor() in schema audit was not shipped by audit_mw"),
    ("CREATE TABLE audit.stash (i int)", "relation stash:r in schema audit was not created"),
    ("CREATE TYPE audit.flag AS ENUM ('x')", "type flag in schema audit was not created"),
    ("CREATE TRIGGER sneaky BEFORE INSERT ON audit.chain FOR EACH ROW "
     "EXECUTE FUNCTION audit.refuse_change()",
     "trigger chain.sneaky on schema audit was not shipped by audit_mw"),
])
def test_status_reports_objects_the_package_did_not_create(
    conn: Conn, create: str, expected: str
) -> None:
    conn.execute("SET ROLE audit_owner")
    conn.execute(create)
    conn.execute("RESET ROLE")
    result = status(conn)
    assert not result.ok
    assert any(p.startswith(expected) for p in result.problems), result.problems


def test_status_reports_an_app_role_that_owns_what_it_should_not(
    attacker: str, conn: Conn
) -> None:
    assert status(conn).ok
    assert status(conn, app_role="audit_mw_test_app").ok
    with psycopg.connect(attacker, autocommit=True) as own:
        own.execute("ALTER TABLE shop.orders ADD COLUMN mood shop.mood")
    problems = status(conn, app_role=ATTACKER).problems
    assert f"application role {ATTACKER} owns tracked table shop.orders" in problems
    assert (f"application role {ATTACKER} owns type shop.mood, used by tracked table "
            "shop.orders") in problems
    assert any("is a superuser" in p for p in status(conn, app_role="postgres").problems)


def test_track_by_a_table_owner_that_is_not_a_superuser_is_a_clear_error(
    attacker: str,
) -> None:
    with psycopg.connect(attacker, autocommit=True) as own:
        own.execute("CREATE TABLE shop.mine (id int PRIMARY KEY)")
        with pytest.raises(TrackingError, match=r"may not track 'shop\.mine'"):
            track(own, "shop.mine")


def test_a_role_that_may_create_capture_triggers_cannot_record_under_another_name(
    attacker: str, conn: Conn
) -> None:
    # A migration role may be granted EXECUTE on the capture functions (grant_migration_role)
    # so that it can track its own tables; it then chooses the triggers' arguments. A trigger
    # on its own table whose arguments name another table (here the tracked shop.orders, and
    # a table that does not exist) records its rows under the name of the table it is on.
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA audit TO {role}; GRANT EXECUTE ON FUNCTION "
                         "audit.capture_insert(), audit.capture_truncate() TO {role}")
                 .format(role=sql.Identifier(ATTACKER)))
    conn.commit()
    with psycopg.connect(attacker, autocommit=True) as own:
        own.execute(b"""
            CREATE TABLE shop.decoy (id int PRIMARY KEY, status text);
            CREATE TRIGGER forge AFTER INSERT ON shop.decoy REFERENCING NEW TABLE AS new_rows
                FOR EACH STATEMENT EXECUTE FUNCTION
                audit.capture_insert('{id}', '{}', '{}', 'shop', 'orders');
            CREATE TRIGGER forge_elsewhere AFTER INSERT ON shop.decoy
                REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION
                audit.capture_insert('{id}', '{}', '{}', 'public', 'users');
            CREATE TRIGGER forge_truncate AFTER TRUNCATE ON shop.decoy FOR EACH STATEMENT
                EXECUTE FUNCTION audit.capture_truncate('{id}', '{}', '{}', 'shop', 'orders');
            INSERT INTO shop.decoy VALUES (1, 'refunded');
            TRUNCATE shop.decoy""")
    rows = conn.execute("SELECT action, schema_name, table_name, record_id FROM audit.events"
                        " WHERE kind = 'data' ORDER BY id").fetchall()
    assert rows == [("INSERT", "shop", "decoy", "1"), ("INSERT", "shop", "decoy", "1"),
                    ("TRUNCATE", "shop", "decoy", None)]
