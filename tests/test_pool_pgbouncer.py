"""The transaction context mode through a real PgBouncer in transaction pooling mode.

PgBouncer is set to one server connection per database and user, so every client shares
it: whatever one client leaves in the session, the next transaction of any client sees.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from audit_mw.context import AuditContext, audit_context
from audit_mw.pool import AsyncAuditPool, AuditPool, ContextMode
from tests._pgbouncer import PgBouncer, run_pgbouncer
from tests._pool import EMPTY_SETTINGS, create_notes, note_events, read_settings

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]
INSERT = "INSERT INTO notes (author, request_id, body) VALUES (%s, %s, %s)"
# PgBouncer before 1.21 cannot keep prepared statements across transactions.
NO_PREPARE = {"prepare_threshold": None}


@pytest.fixture(scope="module")
def pgbouncer(cluster: Any) -> Iterator[PgBouncer]:
    admin = psycopg.conninfo.conninfo_to_dict(cluster.admin_dsn)
    users = [str(admin.get("user") or "postgres"), "audit_mw_test_app"]
    with run_pgbouncer(cluster.admin_dsn, users, pool_mode="transaction", pool_size=1) as bouncer:
        yield bouncer


@pytest.fixture
def bounced_dsn(pgbouncer: PgBouncer, app_dsn: str, conn: Conn) -> str:
    create_notes(conn, grant_to="audit_mw_test_app")
    return pgbouncer.dsn(app_dsn)


def authors(conn: Conn) -> dict[str | None, set[str | None]]:
    found: dict[str | None, set[str | None]] = {}
    for event in note_events(conn):
        found.setdefault(event["author"], set()).add(event["app_user_id"])
    return found


def alice_then_a_plain_client(dsn: str, mode: ContextMode) -> None:
    with AuditPool(dsn, min_size=1, max_size=1, context_mode=mode, kwargs=NO_PREPARE) as pool:
        with audit_context(user_id="alice", request_id="req-a"), pool.connection() as conn:
            conn.execute(INSERT, ["alice", "req-a", mode])
        # Another client of the same PgBouncer, with no audit context of its own.
        with psycopg.connect(dsn, autocommit=True, **NO_PREPARE) as plain:  # type: ignore[arg-type]
            plain.execute(INSERT, ["plain", None, mode])
            leaked = read_settings(plain)["audit.user_id"]
    assert leaked == ("alice" if mode == "session" else "")


def test_session_mode_leaks_through_transaction_pooling(bounced_dsn: str, conn: Conn) -> None:
    # The negative control: what the transaction mode exists for.
    alice_then_a_plain_client(bounced_dsn, "session")
    assert authors(conn) == {"alice": {"alice"}, "plain": {"alice"}}


def test_transaction_mode_does_not_leak_through_transaction_pooling(
    bounced_dsn: str, conn: Conn
) -> None:
    alice_then_a_plain_client(bounced_dsn, "transaction")
    assert authors(conn) == {"alice": {"alice"}, "plain": {None}}


@pytest.mark.slow
def test_concurrent_clients_through_pgbouncer_are_each_attributed(
    bounced_dsn: str, conn: Conn
) -> None:
    """Threads of two pools and a context-free client, interleaved on one server session."""
    failures: list[BaseException] = []
    pools = [
        AuditPool(bounced_dsn, min_size=2, max_size=2, context_mode="transaction",
                  kwargs={**NO_PREPARE, "autocommit": autocommit}, timeout=30, open=True)
        for autocommit in (False, True)
    ]

    def worker(number: int) -> None:
        rng = random.Random(number)  # noqa: S311 - a schedule, not a secret
        pool = pools[number % 2]
        try:
            for i in range(25):
                request_id = f"w{number}-{i}"
                user = f"user-{number}"
                with audit_context(AuditContext(user_id=user, request_id=request_id)), \
                        pool.connection() as c:
                    with c.transaction():
                        c.execute(INSERT, [user, request_id, "tx"])
                    if rng.random() < 0.3:
                        try:
                            with c.transaction():
                                c.execute(INSERT, [user, request_id, "rolled back"])
                                c.execute("SELECT 1/0")
                        except psycopg.errors.DivisionByZero:
                            pass
                    c.execute(INSERT, [user, request_id, "own"])
                    if not c.autocommit:
                        c.commit()
                    assert read_settings(c) == EMPTY_SETTINGS or not c.autocommit
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    def plain_client() -> None:
        try:
            with psycopg.connect(bounced_dsn, autocommit=True, **NO_PREPARE) as plain:  # type: ignore[arg-type]
                for i in range(50):
                    plain.execute(INSERT, ["plain", f"plain-{i}", "plain"])
                    assert read_settings(plain) == EMPTY_SETTINGS
        except BaseException as exc:
            failures.append(exc)

    try:
        threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
        threads.append(threading.Thread(target=plain_client))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        for pool in pools:
            pool.close()
    assert failures == []

    events = note_events(conn)
    assert len(events) == 6 * 25 * 2 + 50
    for event in events:
        if event["author"] == "plain":
            assert event["app_user_id"] is None
            assert event["request_id"] is None
        else:
            assert event["app_user_id"] == event["author"]
            assert event["request_id"] == event["row_request_id"]


def test_async_pool_in_transaction_mode_through_pgbouncer(bounced_dsn: str, conn: Conn) -> None:
    import asyncio  # noqa: PLC0415 - only this test is async

    async def main() -> None:
        async with AsyncAuditPool(bounced_dsn, min_size=1, max_size=2, open=False,
                                  context_mode="transaction", kwargs=NO_PREPARE) as pool:
            async def one(user: str) -> None:
                async with audit_context(user_id=user), pool.connection() as c:
                    for n in range(5):
                        await c.execute(INSERT, [user, None, str(n)])
                        await c.commit()
                        await asyncio.sleep(0)

            await asyncio.gather(*(one(f"user-{n}") for n in range(6)))

    asyncio.run(main())
    assert authors(conn) == {f"user-{n}": {f"user-{n}"} for n in range(6)}
