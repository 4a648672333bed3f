"""1,000 events while the database is down: fail closed, or spool and replay exactly once.

This test runs its own embedded server (the shared one serves the other tests), stops it,
writes 1,000 events under each failure policy, restarts it on the same port, and checks
that nothing was written, lost or duplicated.
"""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from audit_mw.capture.schema import install
from audit_mw.cli import main
from audit_mw.errors import EventWriteError
from audit_mw.events import EventSettings, log_auth_event, replay
from audit_mw.events.spool import Spool
from audit_mw.testing.embedded import EmbeddedServer, wait_for
from tests._events import captured_json_log, log_records

pytestmark = [pytest.mark.db, pytest.mark.slow]

EVENTS = 1000
APP_ROLE = "audit_mw_outage_app"


@pytest.fixture
def server(server_dir: Path) -> Iterator[EmbeddedServer]:
    own = EmbeddedServer(server_dir / "pg", settings={"fsync": "off", "max_connections": "20"})
    own.start()
    try:
        with psycopg.connect(own.dsn(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
        with psycopg.connect(own.dsn()) as conn:
            install(conn, writer_roles=[APP_ROLE])
        yield own
    finally:
        own.destroy()


def stored_event_ids(server: EmbeddedServer) -> list[str]:
    with psycopg.connect(server.dsn()) as conn:
        rows = conn.execute("SELECT event_id::text FROM audit.events ORDER BY id").fetchall()
    return [str(r[0]) for r in rows]


def test_outage_fail_closed_then_spool_and_replay(  # noqa: PLR0915 - one story, told in order
    server: EmbeddedServer, tmp_path: Path
) -> None:
    app_dsn = server.dsn(user=APP_ROLE)
    spool = Spool(tmp_path / "spool" / "events.jsonl")
    fail_closed = EventSettings(timeout=0.001)
    spooling = EventSettings(spool=spool, timeout=0.001)
    pool: ConnectionPool[Any] = ConnectionPool(
        app_dsn, min_size=1, max_size=2, check=ConnectionPool.check_connection,
        kwargs={"connect_timeout": 1}, reconnect_timeout=600, open=True,
    )
    pool.wait()
    started = time.monotonic()
    try:
        server.stop()

        # Fail closed (the default policy): every call raises, with an alertable log line.
        with captured_json_log() as log:
            raised = 0
            for n in range(EVENTS):
                try:
                    log_auth_event(pool, "login_failed", user_id=f"closed-{n}",
                                   settings=fail_closed)
                except EventWriteError:
                    raised += 1
        assert raised == EVENTS
        failures = log_records(log)
        assert len(failures) == EVENTS
        assert {r["event"] for r in failures} == {"audit_mw.event_write_failed"}
        assert {r["level"] for r in failures} == {"error"}
        assert not spool.has_pending()

        # Spool: every call returns at once, the event kept on disk.
        spooled_ids = []
        with captured_json_log() as log:
            for n in range(EVENTS):
                result = log_auth_event(pool, "login_failed", user_id=f"spooled-{n}",
                                        settings=spooling)
                assert result.spooled
                assert not result.stored
                spooled_ids.append(str(result.event_id))
        assert {r["event"] for r in log_records(log)} == {"audit_mw.event_spooled"}
        assert len(spool.read_all()) == EVENTS
        # A copy, as if the process died after storing the events but before the spool
        # file was rewritten: replaying it must store nothing twice.
        stale_copy = tmp_path / "stale.jsonl"
        shutil.copy(spool.path, stale_copy)
        outage = time.monotonic() - started

        server.start()  # same data directory, same port
        wait_for(server.dsn(), timeout=30)
        assert stored_event_ids(server) == []  # fail-closed calls wrote nothing, not partly

        # The next successful write replays the spool.
        recovery = EventSettings(spool=spool, timeout=30)
        with captured_json_log() as log:
            first = log_auth_event(pool, "login", user_id="alice", settings=recovery)
        assert first.stored
        assert [r["event"] for r in log_records(log)] == ["audit_mw.event",
                                                          "audit_mw.spool_replayed"]
        assert log_records(log)[1]["stored"] == EVENTS
        assert not spool.has_pending()

        # Replay again, twice: through the CLI, then from the stale copy.
        with captured_json_log():
            assert main(["--dsn", app_dsn, "replay", "--spool", str(spool.path)]) == 0
            again = replay(pool, Spool(stale_copy), settings=recovery)
        assert (again.stored, again.duplicates, again.pending) == (0, EVENTS, 0)
    finally:
        pool.close()

    ids = stored_event_ids(server)
    assert len(ids) == EVENTS + 1  # 1,000 spooled + the login: 0 lost, 0 duplicated
    assert len(set(ids)) == len(ids)
    assert set(spooled_ids) <= set(ids)
    assert str(first.event_id) in ids
    with psycopg.connect(server.dsn()) as conn:
        row = conn.execute(
            "SELECT count(*) FILTER (WHERE context_extra ? 'audit_mw.spooled_at'),"
            " count(DISTINCT resource_id) FROM audit.events WHERE resource_id LIKE 'spooled-%'"
        ).fetchone()
    assert row == (EVENTS, EVENTS)
    # Both policies together, 2,000 failed writes, stay quick.
    assert outage < 30, f"outage phase took {outage:.1f}s"
    uuid.UUID(ids[0])
