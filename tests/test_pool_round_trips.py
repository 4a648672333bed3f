"""What reaches the server, counted by a delaying proxy: no round trip for the context.

The proxy (``bench/_latency.py``) sits between the client and the server, delays every
packet, and counts the client's turns: each time the client sends after the server has
answered. With a delay far above the client's own work between two sends, a turn is a
network round trip.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from bench._latency import LatencyProxy, latency_proxy
from psycopg_pool import ConnectionPool

from audit_mw.context import AuditContext, audit_context, set_user
from audit_mw.pool import AsyncAuditPool, AuditPool
from tests._pool import create_notes, note_events

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]
INSERT = "INSERT INTO notes (author, request_id) VALUES (%s, %s)"
# Far above what the client does between two sends of one pipeline, even on a busy machine.
DELAY = 0.02
# No prepared statements: preparing costs psycopg a one-off extra round trip.
OPTIONS: dict[str, Any] = {"min_size": 1, "max_size": 1, "kwargs": {"prepare_threshold": None}}


@pytest.fixture
def proxy(app_dsn: str, conn: Conn) -> Iterator[LatencyProxy]:
    create_notes(conn, grant_to="audit_mw_test_app")
    with latency_proxy(app_dsn, DELAY) as proxy:
        yield proxy


@pytest.fixture
def slow_dsn(proxy: LatencyProxy, app_dsn: str) -> str:
    """The application's DSN, through the proxy."""
    return proxy.dsn(app_dsn)


def turns(proxy: LatencyProxy, action: Callable[[], object]) -> int:
    before = proxy.turns
    action()
    return proxy.turns - before


def request(pool: ConnectionPool[Any], number: int, *, statements: int = 1) -> None:
    """One request: a new context, a checkout, ``statements`` INSERTs, commit."""
    context = AuditContext(user_id=f"user-{number}", request_id=f"req-{number}")
    with audit_context(context), pool.connection() as conn:
        for _ in range(statements):
            conn.execute(INSERT, [f"user-{number}", f"req-{number}"])


@pytest.mark.parametrize("pipeline_begin", [False, True])
@pytest.mark.parametrize("autocommit", [False, True])
def test_one_round_trip_per_statement_and_none_for_the_context(
    proxy: LatencyProxy, slow_dsn: str, autocommit: bool, pipeline_begin: bool, conn: Conn
) -> None:
    options = {**OPTIONS, "kwargs": {**OPTIONS["kwargs"], "autocommit": autocommit}}
    with ConnectionPool(slow_dsn, **options) as plain, AuditPool(
            slow_dsn, pipeline_begin=pipeline_begin, **options) as audit:
        plain.wait()
        audit.wait()
        # With pipeline_begin, the BEGIN rides with the settings and the first statement:
        # one fewer than the plain pool. Else the settings ride in the BEGIN's message.
        saved = 1 if pipeline_begin and not autocommit else 0
        for statements in (1, 3):
            # BEGIN, each INSERT, COMMIT; or in autocommit, each INSERT.
            expected = statements if autocommit else statements + 2
            assert turns(proxy, lambda s=statements: request(plain, 0, statements=s)) == expected
            for number in range(1, 4):  # every request a new context
                assert turns(proxy, lambda n=number, s=statements: request(
                    audit, n, statements=s)) == expected - saved

        # A user known late, during a checkout: carried by the next statement, no extra turn.
        def late_login() -> None:
            with audit_context(user_id="anonymous", request_id="req-late"), \
                    audit.connection() as c:
                c.execute("SELECT 1")
                set_user("late")
                c.execute(INSERT, ["late", "req-late"])

        assert turns(proxy, late_login) == (2 if autocommit else 4 - saved)
    authors = {e["author"]: e["app_user_id"] for e in note_events(conn)}
    assert authors == {f"user-{n}": f"user-{n}" if n else None for n in range(4)} | {
        "late": "late"}


@pytest.mark.parametrize("pipeline_begin", [False, True])
def test_async_pool_one_round_trip_per_statement(
    proxy: LatencyProxy, slow_dsn: str, conn: Conn, pipeline_begin: bool
) -> None:
    async def main() -> list[int]:
        counts = []
        async with AsyncAuditPool(
                slow_dsn, open=False, pipeline_begin=pipeline_begin, **OPTIONS) as pool:
            await pool.wait()
            for number in range(3):
                before = proxy.turns
                async with audit_context(user_id=f"user-{number}"), pool.connection() as c:
                    await c.execute(INSERT, [f"user-{number}", None])
                counts.append(proxy.turns - before)
        return counts

    # BEGIN with the settings, INSERT, COMMIT: what a plain pool sends; with pipeline_begin
    # the BEGIN, the settings and the INSERT in one round trip, then COMMIT.
    assert asyncio.run(main()) == ([2, 2, 2] if pipeline_begin else [3, 3, 3])
    assert {e["author"]: e["app_user_id"] for e in note_events(conn)} == {
        f"user-{n}": f"user-{n}" for n in range(3)}
