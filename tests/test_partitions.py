"""The partitioned trail: existing installs migrate, partitions are made ahead of need,
every partition is guarded, and the CLI drives partitions, holds and retention."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from audit_mw import _sql
from audit_mw.capture.partitions import ensure_partitions, list_partitions
from audit_mw.capture.schema import install
from audit_mw.capture.tracking import status, track
from audit_mw.cli import main
from audit_mw.integrity import JsonlSink, seal, verify
from tests._db import track_before_0007
from tests._integrity import HMAC_SECRET, build_trail, env_for, hmac_keys
from tests._retention import count, old_month, partition_names

pytestmark = pytest.mark.db

KEYS = hmac_keys()
Conn = psycopg.Connection[Any]
UTC = dt.UTC


def test_an_existing_install_migrates_with_ids_content_and_chain_intact(
    empty_dsn: str, template_db: str
) -> None:
    # template_db: the audit roles exist once the template is installed.
    before_partitioning = [m for m in _sql.migrations() if m.version < 6]
    event_id = uuid.uuid4()
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA audit AUTHORIZATION audit_owner")
        conn.execute("SET ROLE audit_owner")
        conn.execute(_sql.query("install", "create_migrations_table"))
        with conn.transaction():
            for migration in before_partitioning:
                conn.execute(sql.SQL(migration.text))
                conn.execute(_sql.query("install", "record_migration"), {
                    "version": migration.version, "name": migration.name,
                    "checksum": migration.checksum})
        conn.execute("RESET ROLE")
        build_trail(conn, 200, tracker=track_before_0007)
        conn.execute("INSERT INTO audit.events (occurred_at, kind, action) VALUES"
                     " ('2019-05-17 10:00:00+00', 'data', 'INSERT')")
        conn.execute("SELECT audit.log_event(%s, 'auth', 'login', true, NULL, 'alice', NULL,"
                     " NULL, NULL, NULL, NULL, NULL, NULL)", [event_id])
        seal(conn, KEYS)
        old_rows = conn.execute("SELECT * FROM audit.events ORDER BY id").fetchall()
        last_id = old_rows[-1][0]

        result = install(conn)

        assert result.applied == tuple(m.version for m in _sql.migrations()
                                       if m.version >= 6)
        assert conn.execute("SELECT * FROM audit.events ORDER BY id").fetchall() == old_rows
        assert "events_p201905" in partition_names(conn)
        assert count(conn, "SELECT count(*) FROM audit.events_default") == 0
        assert verify(conn, KEYS).status == "valid_unanchored"
        # The identity goes on from the old table's; the event id stays taken.
        conn.execute("INSERT INTO items VALUES (424242, 'new', 1, '{}', '{}')")
        assert count(conn, "SELECT max(id) FROM audit.events") == last_id + 1
        again = conn.execute(
            "SELECT stored_id, created FROM audit.log_event(%s, 'auth', 'login', true, NULL,"
            " 'alice', NULL, NULL, NULL, NULL, NULL, NULL, NULL)", [event_id]).fetchone()
        assert again is not None
        assert again[1] is False
        # A table tracked before the upgrade is reported until it is tracked again.
        assert not status(conn).ok
        track(conn, "items")
        assert status(conn).ok, status(conn).problems


def test_partitions_are_created_ahead_and_rows_in_default_are_reported(conn: Conn) -> None:
    made = ensure_partitions(conn, 2, now=dt.datetime(2030, 5, 10, tzinfo=UTC))
    assert made.created == ("events_p203005", "events_p203006", "events_p203007")
    assert ensure_partitions(conn, 2, now=dt.datetime(2030, 5, 31, tzinfo=UTC)).created == ()
    # A write outside every partition lands in the default partition, never in an error...
    conn.execute("INSERT INTO audit.events (occurred_at, kind, action) VALUES"
                 " ('2031-01-05 00:00:00+00', 'data', 'INSERT')")
    assert count(conn, "SELECT count(*) FROM audit.events_default") == 1
    # ...and its month is then reported, not created over it.
    later = ensure_partitions(conn, 1, now=dt.datetime(2031, 1, 1, tzinfo=UTC))
    assert later.created == ("events_p203102",)
    assert later.rows_in_default == ("events_p203101",)
    listed = {p.name: p for p in list_partitions(conn)}
    assert listed["events_p203006"].range_from == dt.datetime(2030, 6, 1, tzinfo=UTC)
    assert listed["events_p203006"].range_to == dt.datetime(2030, 7, 1, tzinfo=UTC)
    assert listed["events_default"].is_default
    assert list(listed)[-1] == "events_default"


def test_month_boundaries_are_utc_whatever_the_session_time_zone(conn: Conn) -> None:
    conn.execute("SET TimeZone = 'America/New_York'")
    ensure_partitions(conn, 0, now=dt.datetime(2032, 3, 1, 2, 0, tzinfo=UTC))
    row = conn.execute("SELECT range_from, range_to FROM audit.event_partitions()"
                       " WHERE partition_name = 'events_p203203'").fetchone()
    assert row == (dt.datetime(2032, 3, 1, tzinfo=UTC), dt.datetime(2032, 4, 1, tzinfo=UTC))


@pytest.mark.parametrize("statement", [
    "DELETE FROM audit.events_p201901",
    "UPDATE audit.events_p201901 SET app_user_id = 'x'",
    "TRUNCATE audit.events_p201901",
    "TRUNCATE audit.events_default",
    "DELETE FROM audit.event_ids",
])
def test_every_partition_is_append_only_even_for_the_owner(conn: Conn, statement: str) -> None:
    old_month(conn, 2019, 1, 3, user="alice")
    conn.execute("SET ROLE audit_owner")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute(statement)
    conn.execute("RESET ROLE")
    assert count(conn, "SELECT count(*) FROM audit.events_p201901") == 3


def test_status_reports_a_disabled_partition_guard(conn: Conn) -> None:
    old_month(conn, 2019, 1, 1, user="alice")
    assert status(conn).ok
    conn.execute("ALTER TABLE audit.events_p201901 DISABLE TRIGGER events_append_only")
    conn.execute("DROP TRIGGER events_no_truncate ON audit.events_default")
    problems = status(conn).problems
    assert ("append-only guard events_append_only on partition audit.events_p201901 is "
            "disabled") in problems
    assert ("append-only guard events_no_truncate on partition audit.events_default is "
            "missing") in problems


def test_the_app_role_cannot_maintain_partitions(app_dsn: str) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        for statement in ("SELECT audit.ensure_partitions(1)",
                          "SELECT audit.create_partition('2019-01-01', '2019-02-01')",
                          "SELECT audit.drop_partition('audit.events_default', 1)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                app.execute(statement)


def test_the_admin_queries_use_the_partition_indexes(conn: Conn) -> None:
    track_table = "CREATE TABLE t (id int PRIMARY KEY, v text)"
    conn.execute(track_table)
    track(conn, "t")
    plan = "\n".join(str(r[0]) for r in conn.execute(
        "EXPLAIN SELECT * FROM audit.events WHERE table_name = 't' AND record_id = '1'"
        " ORDER BY id LIMIT 50"))
    assert "events_record_idx" in plan or "table_name_record_id_id_idx" in plan, plan
    assert "Seq Scan" not in plan, plan


def test_cli_partitions_holds_and_retention(
    dsn: str, conn: Conn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env_for({"k1": HMAC_SECRET}, "k1").items():
        monkeypatch.setenv(name, value)
    old_month(conn, 2019, 1, 4, user="alice")
    old_month(conn, 2019, 2, 4, user="bob")
    file = tmp_path / "checkpoints.jsonl"
    seal(conn, KEYS, sinks=[JsonlSink(file)])
    now = ["--now", "2021-01-15T00:00:00+00:00"]

    assert main(["--dsn", dsn, "partitions", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"events_p201901", "events_p201902", "events_default"} <= {
        p["partition"] for p in listed}
    assert main(["--dsn", dsn, "hold", "add", "--reason", "case 7", "--user", "bob",
                 "--by", "counsel"]) == 0
    assert "legal hold 1 placed" in capsys.readouterr().out
    assert main(["--dsn", dsn, "hold", "list"]) == 0
    assert "1: user bob: case 7 [counsel]" in capsys.readouterr().out

    assert main(["--dsn", dsn, "retention", "show", "--policy", "pci", *now]) == 0
    shown = capsys.readouterr().out
    assert "drop     events_p201901: expired, sealed, not held, 4 events" in shown
    assert "keep     events_p201902: expired, but under legal hold 1" in shown
    assert main(["--dsn", dsn, "retention", "apply", "--policy", "9mo", *now]) == 2
    assert "less than 12 months" in capsys.readouterr().err
    assert main(["--dsn", dsn, "retention", "apply", "--policy", "pci", "--dry-run",
                 "--json", *now]) == 0
    assert json.loads(capsys.readouterr().out)["dropped"] == []
    assert "events_p201901" in partition_names(conn)
    assert main(["--dsn", dsn, "retention", "apply", "--policy", "pci", "--checkpoint-file",
                 str(file), *now]) == 0
    assert "DROPPED  events_p201901" in capsys.readouterr().out
    assert (tmp_path / "checkpoints.jsonl.retention").read_text().count("\n") == 1

    assert main(["--dsn", dsn, "verify", "--checkpoint-file", str(file), "--json"]) == 0
    verified = json.loads(capsys.readouterr().out)
    assert verified["status"] == "valid"
    assert verified["retention_cut"]["partitions"] == ["events_p201901"]
    assert main(["--dsn", dsn, "hold", "remove", "1", "--reason", "closed"]) == 0
    assert main(["--dsn", dsn, "partitions", "ensure", "--months-ahead", "1"]) == 0
    assert "created 0 partition(s)" in capsys.readouterr().out.splitlines()[-1]
