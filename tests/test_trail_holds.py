"""The trail holds: renamed columns and tables, writes aimed at partitions, rows forged into
audit.events, and a sealer blocked by another role (issue: the trail holds against the roles
it audits)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout
from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw.capture.tracking import retrack, status, track, untrack
from audit_mw.cli import main
from audit_mw.integrity import seal, verify
from tests._db import audit_rows
from tests._integrity import HMAC_SECRET, env_for, hmac_keys

KEYS = hmac_keys()
Conn = psycopg.Connection[Any]


def _trail_text(conn: Conn) -> str:
    rows = conn.execute("SELECT e::text FROM audit.events AS e").fetchall()
    return "\n".join(r[0] for r in rows)


# -- excluded and masked columns follow the column -------------------------------------------

def test_renamed_excluded_and_masked_columns_stay_out(conn: Conn) -> None:
    conn.execute("CREATE TABLE people (id int PRIMARY KEY, name text, password text, ssn text)")
    track(conn, "people", exclude=["password"], mask=["ssn"])
    conn.execute("ALTER TABLE people RENAME COLUMN password TO password_hash")
    conn.execute("ALTER TABLE people RENAME COLUMN ssn TO national_id")
    conn.execute("INSERT INTO people VALUES (1, 'ann', 'CANARY-PW-1', 'CANARY-SSN-1')")
    conn.execute("UPDATE people SET password_hash = 'CANARY-PW-2', national_id = 'CANARY-SSN-2', "
                 "name = 'anne'")
    conn.execute("DELETE FROM people")
    trail = _trail_text(conn)
    assert "CANARY" not in trail
    rows = audit_rows(conn, "people")
    assert [r["action"] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
    assert rows[0]["new_values"] == {"id": 1, "name": "ann", "national_id": "[masked]"}
    assert rows[1]["changed_fields"] == ["name", "national_id"]
    # A new column that takes the excluded column's old name is kept out as well.
    conn.execute("ALTER TABLE people ADD COLUMN password text")
    conn.execute("INSERT INTO people VALUES (2, 'bo', 'CANARY-PW-3', NULL, 'CANARY-PW-4')")
    assert "CANARY" not in _trail_text(conn)
    assert status(conn).ok


def test_renamed_columns_stay_out_of_a_partitioned_table_and_its_partitions(conn: Conn) -> None:
    conn.execute(b"""
        CREATE TABLE ledger (id int, region text, secret text, PRIMARY KEY (id, region))
            PARTITION BY LIST (region);
        CREATE TABLE ledger_eu (secret text, region text NOT NULL, id int NOT NULL);
        ALTER TABLE ledger ATTACH PARTITION ledger_eu FOR VALUES IN ('eu');
    """)
    track(conn, "ledger", exclude=["secret"])
    conn.execute("ALTER TABLE ledger RENAME COLUMN secret TO token")
    conn.execute("INSERT INTO ledger VALUES (1, 'eu', 'CANARY-1')")
    conn.execute("INSERT INTO ledger_eu (id, region, token) VALUES (2, 'eu', 'CANARY-2')")
    assert "CANARY" not in _trail_text(conn)
    assert len(audit_rows(conn, "ledger")) == 2


# -- renamed tables ----------------------------------------------------------------------------

def test_a_renamed_table_is_reported_and_retrack_restores_it(conn: Conn) -> None:
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY, note text, card text)")
    track(conn, "orders", mask=["card"])
    conn.execute("ALTER TABLE orders RENAME TO purchases")
    conn.execute("INSERT INTO purchases VALUES (1, 'a', '4111')")
    # Capture never stopped: the row is recorded under the table's name as it is now (the
    # server's, not the one written into the triggers at track), with the options of track.
    assert audit_rows(conn, "orders") == []
    assert [r["new_values"]["card"] for r in audit_rows(conn, "purchases")] == ["[masked]"]
    result = status(conn)
    assert not result.ok
    (table,) = result.tables
    assert table.table == "public.orders"
    assert table.problems == ("table was renamed to public.purchases; its rows are recorded "
                              "under the new name, its record is not: run `audit-mw retrack`",)
    (done,) = retrack(conn)
    assert (done.table_name, done.masked) == ("purchases", ("card",))
    conn.execute("INSERT INTO purchases VALUES (2, 'b', '4222')")
    assert [r["new_values"]["card"] for r in audit_rows(conn, "purchases")] == ["[masked]"] * 2
    assert status(conn).ok


def test_a_renamed_partitioned_table_records_direct_partition_writes_under_its_new_name(
    conn: Conn,
) -> None:
    conn.execute(b"""
        CREATE TABLE ledger (id int, region text, PRIMARY KEY (id, region))
            PARTITION BY LIST (region);
        CREATE TABLE ledger_eu PARTITION OF ledger FOR VALUES IN ('eu')""")
    track(conn, "ledger")
    conn.execute("ALTER TABLE ledger RENAME TO journal")
    conn.execute("INSERT INTO journal VALUES (1, 'eu')")
    conn.execute("INSERT INTO ledger_eu VALUES (2, 'eu')")
    conn.execute("TRUNCATE ledger_eu")
    assert [(r["action"], r["record_id"]) for r in audit_rows(conn, "journal")] == [
        ("INSERT", '[1, "eu"]'), ("INSERT", '[2, "eu"]'), ("TRUNCATE", None)]
    assert audit_rows(conn, "ledger") == []
    assert audit_rows(conn, "ledger_eu") == []


def test_a_renamed_key_column_is_reported_and_retrack_restores_the_record_id(
    conn: Conn,
) -> None:
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, note text)")
    track(conn, "accounts")
    conn.execute("ALTER TABLE accounts RENAME COLUMN id TO account_id")
    conn.execute("INSERT INTO accounts VALUES (1, 'a')")
    assert [r["record_id"] for r in audit_rows(conn, "accounts")] == [None]
    (table,) = status(conn).tables
    assert table.problems == (
        "primary key is now (account_id), tracked as (id): record ids are read from the "
        "columns tracked (NULL where they are gone); run `audit-mw retrack`",)
    retrack(conn)
    conn.execute("INSERT INTO accounts VALUES (2, 'b')")
    assert [r["record_id"] for r in audit_rows(conn, "accounts")] == [None, "2"]
    assert status(conn).ok


def test_untrack_of_a_renamed_table_removes_its_triggers_and_record(conn: Conn) -> None:
    conn.execute("CREATE TABLE orders (id int PRIMARY KEY)")
    track(conn, "orders")
    conn.execute("ALTER TABLE orders RENAME TO purchases")
    untrack(conn, "purchases")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'purchases'::regclass "
                        "AND NOT tgisinternal").fetchone() == (0,)
    assert status(conn).tables == ()


# -- partitions --------------------------------------------------------------------------------

@pytest.fixture
def partitioned(conn: Conn) -> Conn:
    conn.execute(b"""
        CREATE TABLE sales (id int, year int, amount int, PRIMARY KEY (id, year))
            PARTITION BY RANGE (year);
        CREATE TABLE sales_2026 PARTITION OF sales FOR VALUES FROM (2026) TO (2027);
        CREATE TABLE sales_2027 PARTITION OF sales FOR VALUES FROM (2027) TO (2028)
            PARTITION BY RANGE (id);
        CREATE TABLE sales_2027_low PARTITION OF sales_2027 FOR VALUES FROM (0) TO (1000);
    """)
    track(conn, "sales")
    return conn


def test_writes_aimed_at_a_partition_are_captured_exactly_once(partitioned: Conn) -> None:
    conn = partitioned
    conn.execute("INSERT INTO sales VALUES (1, 2026, 10)")
    conn.execute("INSERT INTO sales_2026 VALUES (2, 2026, 20)")
    conn.execute("INSERT INTO sales_2027_low VALUES (3, 2027, 30)")
    conn.execute("INSERT INTO sales_2027 VALUES (4, 2027, 40)")
    with conn.cursor().copy("COPY sales_2026 (id, year, amount) FROM STDIN") as copy:
        copy.write_row((5, 2026, 50))
        copy.write_row((6, 2026, 60))
    conn.execute("UPDATE sales_2026 SET amount = amount + 1 WHERE id = 2")
    conn.execute("UPDATE sales SET amount = amount + 1 WHERE id = 1")
    conn.execute("DELETE FROM sales_2027_low WHERE id = 3")
    conn.execute("DELETE FROM sales WHERE id = 4")
    rows = audit_rows(conn, "sales")
    assert [(r["action"], r["record_id"]) for r in rows] == [
        ("INSERT", '[1, 2026]'), ("INSERT", '[2, 2026]'), ("INSERT", '[3, 2027]'),
        ("INSERT", '[4, 2027]'), ("INSERT", '[5, 2026]'), ("INSERT", '[6, 2026]'),
        ("UPDATE", '[2, 2026]'), ("UPDATE", '[1, 2026]'), ("DELETE", '[3, 2027]'),
        ("DELETE", '[4, 2027]'),
    ]
    assert {r["schema_name"] for r in rows} == {"public"}
    assert status(partitioned).ok


def test_a_partition_attached_after_track_is_reported_until_retracked(partitioned: Conn) -> None:
    conn = partitioned
    conn.execute("CREATE TABLE sales_2028 (id int NOT NULL, year int NOT NULL, amount int)")
    conn.execute("ALTER TABLE sales ATTACH PARTITION sales_2028 FOR VALUES FROM (2028) TO (2029)")
    conn.execute("CREATE TABLE sales_2029 PARTITION OF sales FOR VALUES FROM (2029) TO (2030)")
    result = status(conn)
    assert not result.ok
    (table,) = result.tables
    assert [p.split(" has no")[0] for p in table.problems] == [
        "partition public.sales_2028", "partition public.sales_2029"]
    conn.execute("INSERT INTO sales_2028 VALUES (1, 2028, 1)")  # not captured yet
    retrack(conn)
    assert status(conn).ok
    conn.execute("INSERT INTO sales_2028 VALUES (2, 2028, 1)")
    conn.execute("INSERT INTO sales_2029 VALUES (3, 2029, 1)")
    assert [r["record_id"] for r in audit_rows(conn, "sales")] == ['[2, 2028]', '[3, 2029]']


def test_a_partition_whose_capture_is_dropped_is_reported(partitioned: Conn) -> None:
    partitioned.execute("DROP TRIGGER audit_mw_insert ON sales_2027_low")
    (table,) = status(partitioned).tables
    assert table.problems[0].startswith("partition public.sales_2027_low has no working "
                                        "capture (audit_mw_insert missing")


def test_a_partition_whose_capture_is_swapped_for_another_function_is_reported(
    partitioned: Conn
) -> None:
    partitioned.execute(b"""
        CREATE FUNCTION public.nothing() RETURNS trigger LANGUAGE plpgsql AS
            'BEGIN RETURN NULL; END';
        DROP TRIGGER audit_mw_insert ON sales_2026;
        CREATE TRIGGER audit_mw_insert AFTER INSERT ON sales_2026
            FOR EACH STATEMENT EXECUTE FUNCTION public.nothing();
        ALTER TABLE sales_2026 ENABLE ALWAYS TRIGGER audit_mw_insert;
    """)
    (table,) = status(partitioned).tables
    assert table.problems == (
        "partition public.sales_2026: trigger audit_mw_insert is not audit_mw's capture (it "
        "runs another function): writes aimed at it are not recorded; drop it and run "
        "`audit-mw retrack`",)


def test_untrack_removes_the_partitions_capture(partitioned: Conn) -> None:
    untrack(partitioned, "sales")
    assert partitioned.execute(
        "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'audit_mw_%'").fetchone() == (0,)


# -- server truth ------------------------------------------------------------------------------

@pytest.mark.parametrize("forged", [
    "INSERT INTO audit.events (occurred_at, kind, action, table_name, db_role) "
    "VALUES (now() - interval '30 days', 'data', 'INSERT', 'notes', 'app')",
    "INSERT INTO audit.events (kind, action, table_name) VALUES ('data', 'INSERT', 'notes')",
    "INSERT INTO audit.events (kind, action, db_role) VALUES ('auth', 'login', 'someone')",
    "INSERT INTO audit.events (kind, action, occurred_at) "
    "VALUES ('auth', 'login', now() - interval '1 day')",
    "INSERT INTO audit.events (kind, action, txid) VALUES ('auth', 'login', '3')",
    "INSERT INTO audit.events (kind, action, client_addr) VALUES ('auth', 'login', '10.0.0.1')",
    "INSERT INTO audit.events_default (occurred_at, kind, action) "
    "VALUES ('1999-01-01', 'admin', 'x')",
])
def test_the_owner_cannot_forge_an_event(conn: Conn, forged: str) -> None:
    conn.execute("SET ROLE audit_owner")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="server's time"):
        conn.execute(forged)
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT count(*) FROM audit.events").fetchone() == (0,)


def test_capture_cannot_write_an_application_event(conn: Conn) -> None:
    conn.execute("GRANT audit_capture TO CURRENT_USER")
    conn.execute("SET ROLE audit_capture")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="only capture writes"):
        conn.execute("INSERT INTO audit.events (kind, action) VALUES ('auth', 'login')")
    conn.execute("RESET ROLE")
    conn.execute("REVOKE audit_capture FROM CURRENT_USER")


def test_the_owner_may_still_log_events_through_the_function(conn: Conn) -> None:
    conn.execute("SET ROLE audit_owner")
    conn.execute("SELECT audit.log_event(gen_random_uuid(), 'admin', 'x', true, NULL, 'u', "
                 "NULL, NULL, NULL, NULL, NULL, NULL, NULL)")
    conn.execute("RESET ROLE")
    assert conn.execute("SELECT count(*) FROM audit.events").fetchone() == (1,)


def test_a_superuser_may_import_history(conn: Conn) -> None:
    conn.execute("INSERT INTO audit.events (occurred_at, kind, action) "
                 "VALUES ('2020-01-01', 'auth', 'login')")
    assert conn.execute("SELECT count(*) FROM audit.events").fetchone() == (1,)


# -- sealing cannot be silenced ----------------------------------------------------------------

def test_an_advisory_lock_held_by_the_app_does_not_stop_sealing(
    app_dsn: str, conn: Conn
) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
    track(conn, "notes")
    conn.execute("INSERT INTO notes VALUES (1)")
    with psycopg.connect(app_dsn, autocommit=True) as app:
        app.execute("SELECT pg_advisory_lock(hashtext('audit_mw.seal'))")
        app.execute("SELECT pg_advisory_lock(0)")
        result = seal(conn, KEYS)
        assert not result.busy
        assert result.sealed == 1
        # Nor can the application take the lease itself.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("SELECT audit.take_seal_lease()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("UPDATE audit.seal_lease SET holder_pid = pg_backend_pid()")
    assert verify(conn, KEYS).valid


def test_a_sealer_that_cannot_run_exits_non_zero_saying_blocked(
    dsn: str, conn: Conn, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
    track(conn, "notes")
    conn.execute("INSERT INTO notes VALUES (1)")
    for name, value in env_for({"k1": HMAC_SECRET}, "k1").items():
        monkeypatch.setenv(name, value)
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT audit.take_seal_lease()")  # another sealer, still running
        out = io.StringIO()
        with redirect_stdout(out):
            code = main(["--dsn", dsn, "seal"])
        assert code == 3
        text = out.getvalue()
        assert text.startswith("blocked: the sealing lease is held by backend ")
        assert "the oldest unsealed event is from" in text
    # Its backend gone, the lease lapses.
    with redirect_stdout(io.StringIO()):
        assert main(["--dsn", dsn, "seal"]) == 0
    assert verify(conn, KEYS).valid


@pytest.mark.parametrize("zone", ["UTC+14", "Pacific/Kiritimati"])
def test_a_blocked_sealer_reads_the_backlog_time_in_utc_whatever_the_session_zone(
    dsn: str, conn: Conn, zone: str
) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
    track(conn, "notes")
    conn.execute("INSERT INTO notes VALUES (1)")
    (written,) = conn.execute("SELECT max(occurred_at) FROM audit.events").fetchone() or (None,)
    with psycopg.connect(dsn, autocommit=True) as other, \
            psycopg.connect(dsn, autocommit=True) as sealer:
        other.execute("SELECT audit.take_seal_lease()")
        sealer.execute(sql.SQL("SET TimeZone = {}").format(sql.Literal(zone)))
        result = seal(sealer, KEYS)
    assert result.busy
    assert result.oldest_unsealed == written
    assert result.holder is not None
    assert result.holder.endswith("Z")
