"""The event path cannot be jammed: what is spooled, what is refused, what hostile input does.

- only failures that can pass are spooled; a permanent one raises at once;
- a record the database refuses for good is set aside by replay with its reason, and the
  rest of the spool is stored; a spooled record never makes a later write raise;
- user names with lone surrogates, NUL bytes and 8 KB of text are stored, never lost.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import psycopg_pool
import pytest
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from audit_mw.errors import EventWriteError
from audit_mw.events import EventSettings, alog_event, log_auth_event, log_event, replay
from audit_mw.events._outcome import is_transient
from audit_mw.events.spool import Spool
from tests._events import captured_json_log, log_records

pytestmark = pytest.mark.db

DEAD_DSN = "host=127.0.0.1 port=1 connect_timeout=1"


def _events(conn: psycopg.Connection[Any], where: str = "kind <> 'data'") -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(f"SELECT * FROM audit.events WHERE {where} ORDER BY id")
        return cur.fetchall()


def test_transient_and_permanent_failures_are_told_apart() -> None:
    def error(cls: type[psycopg.Error], state: str | None) -> psycopg.Error:
        exc = cls("x")
        if state is not None:
            exc.sqlstate = state  # type: ignore[misc]  # set on a test instance
        return exc

    assert is_transient(psycopg_pool.PoolTimeout("x"))
    assert is_transient(psycopg_pool.TooManyRequests("x"))
    assert is_transient(psycopg.OperationalError("connection refused"))
    for state in ("08006", "08001", "57P01", "57P02", "57P03", "53300"):
        assert is_transient(error(psycopg.errors.lookup(state), None)), state
    for state in ("23505", "P0001", "22021", "42883", "42501", "22P02"):
        assert not is_transient(error(psycopg.errors.lookup(state), None)), state
    assert not is_transient(UnicodeEncodeError("utf-8", "x", 0, 1, "surrogates"))


def test_a_permanent_error_raises_at_once_and_is_never_spooled(
    app_dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    settings = EventSettings(spool=spool, timeout=2)
    reused = uuid.uuid4()
    with ConnectionPool(app_dsn, min_size=1, max_size=2) as pool:
        assert log_event(pool, "config_changed", event_id=reused, settings=settings).stored
        with pytest.raises(EventWriteError, match="the database refused it; not spooled"):
            log_event(pool, "user_deleted", event_id=reused, settings=settings)
    assert not spool.has_pending()
    assert [e["action"] for e in _events(conn)] == ["config_changed"]


def test_a_poisoned_spool_replays_everything_else_and_reports_the_rejected_record(
    app_dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    settings = EventSettings(spool=spool, timeout=0.2)
    reused = uuid.uuid4()
    with ConnectionPool(DEAD_DSN, min_size=0, max_size=1) as dead:
        # During a real outage: a failed login, then the record that will be refused (its
        # event id is taken by another event meanwhile), then two more.
        assert log_auth_event(dead, "login_failed", user_id="mallory", settings=settings).spooled
        assert log_event(dead, "user_deleted", event_id=reused, settings=settings).spooled
        for n in range(2):
            assert log_event(dead, "config_changed", resource_id=n, settings=settings).spooled
    # A line spooled by an older version, holding a lone surrogate and a NUL (escaped).
    old = json.loads(spool.read_all()[0])
    old.update(event_id=str(uuid.uuid4()), app_user_id="adm\\ud800in\\u0000")
    spool.append(json.dumps(old).replace("\\\\", "\\"))
    with psycopg.connect(app_dsn, autocommit=True) as app:
        log_event(app, "config_changed", event_id=reused)  # takes the id

    settings = EventSettings(spool=spool, timeout=2)
    with captured_json_log() as log, ConnectionPool(app_dsn, min_size=1, max_size=2) as pool:
        # Three healthy writes: none raises, and the first one's replay drains the spool.
        for n in range(3):
            assert log_event(pool, "config_changed", resource_id=f"healthy{n}",
                             settings=settings).stored
    records = log_records(log)
    rejected = [r for r in records if r["event"] == "audit_mw.spool_record_rejected"]
    assert len(rejected) == 1
    assert rejected[0]["event_id"] == str(reused)
    assert "already used by a different event" in rejected[0]["error"]
    replayed = next(r for r in records if r["event"] == "audit_mw.spool_replayed")
    assert (replayed["stored"], replayed["rejected"], replayed["pending"]) == (4, 1, 0)

    assert not spool.has_pending()
    [line] = spool.rejected_path.read_text().splitlines()
    entry = json.loads(line)
    assert "already used by a different event" in entry["rejected"]
    assert json.loads(entry["line"])["event_id"] == str(reused)
    stored = _events(conn)
    assert [e["action"] for e in stored].count("login_failed") == 2  # and its old-version copy
    assert sum(e["app_user_id"] == "adm\ufffdin\ufffd" for e in stored) == 1
    assert [e["resource_id"] for e in stored if e["resource_id"]
            and e["resource_id"].startswith("healthy")] == ["healthy0", "healthy1", "healthy2"]
    # Nothing left to do.
    with psycopg.connect(app_dsn, autocommit=True) as app:
        again = replay(app, spool)
    assert (again.stored, again.rejected, again.pending) == (0, 0, 0)


def test_hostile_user_names_are_stored_never_lost(
    app_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    names = []
    for n in range(1000):
        match n % 4:
            case 0:
                names.append(f"admin\ud800{n}")
            case 1:
                names.append(f"root\x00{n}\udfff")
            case 2:
                names.append(f"{n}" + "x" * 8192)
            case _:
                names.append(f"\udbff\x00{n}" + "\U0001f600" * 2048)
    with ConnectionPool(app_dsn, min_size=1, max_size=4) as pool:
        for name in names:
            result = log_auth_event(pool, "login_failed", user_id=name, reason=name,
                                    metadata={name: name, "tried": [name]})
            assert result.stored
    stored = _events(conn, "action = 'login_failed'")
    assert len(stored) == 1000
    for event in stored:
        assert "\x00" not in event["resource_id"]
        assert len(event["resource_id"]) <= 256
    assert stored[0]["resource_id"] == "admin\ufffd0"


def test_async_permanent_error_is_not_spooled(app_dsn: str, tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    settings = EventSettings(spool=spool, timeout=2)
    reused = uuid.uuid4()

    async def go() -> None:
        async with AsyncConnectionPool(app_dsn, min_size=1, max_size=2) as pool:
            assert (await alog_event(pool, "config_changed", event_id=reused,
                                     settings=settings)).stored
            with pytest.raises(EventWriteError, match="refused"):
                await alog_event(pool, "user_deleted", event_id=reused, settings=settings)

    asyncio.run(go())
    assert not spool.has_pending()
