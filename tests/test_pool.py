"""AuditPool and AsyncAuditPool on a real server: attribution, reuse, round trips."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg import ClientCursor, RawCursor

from audit_mw.context import AuditContext, audit_context
from audit_mw.errors import ConfigurationError
from audit_mw.pool import (
    AsyncAuditPool,
    AuditCursor,
    AuditPool,
    aapply_context,
    apply_context,
)
from tests._pool import (
    EMPTY_SETTINGS,
    INSERT_NOTE,
    count_round_trips,
    note_events,
    protocol_trace,
    read_settings,
    read_settings_async,
    sent_queries,
)

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]
ALICE = AuditContext(user_id="alice", client_ip="10.0.0.1", request_id="req-a", user_agent="ua",
                     extra={"tenant": "t1"})
ANON = AuditContext(user_id="anonymous", client_ip="10.0.0.2", request_id="req-b")


@pytest.fixture
def pool(app_dsn: str, notes: Conn) -> Iterator[AuditPool]:
    with AuditPool(app_dsn, min_size=1, max_size=1, timeout=10) as pool:
        yield pool


def users_by_author(conn: Conn) -> dict[str | None, set[str | None]]:
    found: dict[str | None, set[str | None]] = {}
    for event in note_events(conn):
        found.setdefault(event["author"], set()).add(event["app_user_id"])
    return found


def settings_after_return(pool: AuditPool) -> dict[str, str]:
    # A checkout with no context at all: whatever the last borrower left, it must not see.
    with pool.connection() as conn:
        return read_settings(conn)


# -- session mode ------------------------------------------------------------------------


@pytest.mark.parametrize("autocommit", [False, True])
def test_every_statement_of_a_checkout_is_attributed(
    app_dsn: str, notes: Conn, autocommit: bool
) -> None:
    with AuditPool(app_dsn, min_size=1, max_size=1, kwargs={"autocommit": autocommit}) as pool:
        with audit_context(ALICE), pool.connection() as conn:
            assert read_settings(conn) == ALICE.settings()
            conn.execute(INSERT_NOTE, ["first", None])
            if not autocommit:
                conn.commit()
            with conn.transaction():
                conn.execute(INSERT_NOTE, ["second", None])
            # A rollback mid-checkout does not take the context with it.
            with pytest.raises(psycopg.errors.DivisionByZero):
                fail_in_transaction(conn)
            conn.execute(INSERT_NOTE, ["after rollback", None])
            if not autocommit:
                conn.rollback()
                conn.execute(INSERT_NOTE, ["after second rollback", None])
        assert settings_after_return(pool) == EMPTY_SETTINGS

    events = note_events(notes)
    last = "after rollback" if autocommit else "after second rollback"
    assert {e["author"] for e in events} == {"first", "second", last}
    for event in events:
        assert event["app_user_id"] == "alice"
        assert event["request_id"] == "req-a"


def fail_in_transaction(conn: Conn) -> None:
    with conn.transaction():
        conn.execute(INSERT_NOTE, ["rolled back", None])
        conn.execute("SELECT 1/0")


def write_as(pool: AuditPool, context: AuditContext | None, author: str) -> None:
    with audit_context(context or AuditContext()), pool.connection() as conn:
        conn.execute(INSERT_NOTE, [author, None])


def leave_open(pool: AuditPool) -> None:
    conn = pool.getconn()
    conn.execute(INSERT_NOTE, ["alice-uncommitted", None])
    pool.putconn(conn)  # in transaction: the pool rolls it back


def raise_inside(pool: AuditPool) -> None:
    def body() -> None:
        with pool.connection() as conn:
            conn.execute(INSERT_NOTE, ["alice-raised", None])
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        body()


def break_connection(pool: AuditPool) -> None:
    def body() -> None:
        with pool.connection() as conn:
            conn.execute(INSERT_NOTE, ["alice-broke", None])
            conn.commit()
            conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    with pytest.raises(psycopg.OperationalError):
        body()


def finish_cleanly(pool: AuditPool) -> None:
    with pool.connection() as conn:
        conn.execute(INSERT_NOTE, ["alice", None])


@pytest.mark.parametrize(
    "alice", [finish_cleanly, raise_inside, leave_open, break_connection],
    ids=lambda f: f.__name__,
)
def test_the_next_borrower_never_inherits_the_context(
    pool: AuditPool, notes: Conn, alice: Callable[[AuditPool], None]
) -> None:
    with audit_context(ALICE):
        alice(pool)
    assert settings_after_return(pool) == EMPTY_SETTINGS
    write_as(pool, ANON, "anonymous")
    write_as(pool, None, "nobody")
    assert settings_after_return(pool) == EMPTY_SETTINGS

    users = users_by_author(notes)
    assert users["anonymous"] == {"anonymous"}
    assert users["nobody"] == {None}
    assert all(author.startswith("alice") for author, who in users.items() if "alice" in who)


def test_jobs_are_attributed_to_the_job_and_no_context_to_nobody(
    pool: AuditPool, notes: Conn
) -> None:
    with audit_context(user_id="job:nightly-billing"):
        write_as_current(pool, "job")
        with audit_context(user_id="job:nightly-billing:step-2"):
            write_as_current(pool, "nested job")
        write_as_current(pool, "job again")
    write_as_current(pool, "script")

    users = users_by_author(notes)
    assert users == {
        "job": {"job:nightly-billing"},
        "nested job": {"job:nightly-billing:step-2"},
        "job again": {"job:nightly-billing"},
        "script": {None},
    }
    assert {e["request_id"] for e in note_events(notes)} == {None}


def write_as_current(pool: AuditPool, author: str) -> None:
    with pool.connection() as conn:
        conn.execute(INSERT_NOTE, [author, None])


def test_a_new_context_costs_no_round_trip_of_its_own(app_dsn: str, notes: Conn) -> None:
    # Not prepared: psycopg's one-off round trip to prepare a statement would blur the count.
    pool = AuditPool(app_dsn, min_size=1, max_size=1, kwargs={"prepare_threshold": None})
    with pool:
        _count_checkout_round_trips(pool, notes)


def _count_checkout_round_trips(pool: AuditPool, notes: Conn) -> None:
    def checkout() -> None:
        with pool.connection() as conn:
            conn.execute(INSERT_NOTE, ["x", None])

    with pool.connection() as conn:
        pass
    (conn,) = pool._pool  # the only connection, to trace it
    # Plain: BEGIN, INSERT, COMMIT: three requests, three ReadyForQuery, three turns.
    with audit_context(ALICE):
        # A connection's first context: set at session level and synced on its own, ahead of
        # the BEGIN and in the same round trip (one more ReadyForQuery; on the wire in
        # tests/test_pool_round_trips.py).
        assert count_round_trips(conn, checkout)[1] == 4
        # The context already there: nothing is added at all.
        assert count_round_trips(conn, checkout)[1:] == (3, 3)
        # An equal context (another object) is just as current.
        with audit_context(AuditContext(**{f: getattr(ALICE, f) for f in (
                "user_id", "client_ip", "request_id", "user_agent", "extra")})):
            assert count_round_trips(conn, checkout)[1:] == (3, 3)
        with audit_context(request_id="req-c"):
            # A new context: in the BEGIN's own message, only the setting that differs.
            _, lines = protocol_trace(conn, checkout)
            assert sent_queries(lines)[0] == (
                '"BEGIN; SET LOCAL "audit"."request_id" = \'req-c\'"')
            assert count_round_trips(conn, checkout)[1:] == (3, 3)  # again in the BEGIN
            # The third transaction in a row: set at session level, then nothing.
            assert count_round_trips(conn, checkout)[1:] == (4, 3)
            assert count_round_trips(conn, checkout)[1:] == (3, 3)
    with audit_context(AuditContext()):
        assert count_round_trips(conn, checkout)[1:] == (3, 3)
        assert count_round_trips(conn, checkout)[1:] == (3, 3)
        assert count_round_trips(conn, checkout)[1:] == (4, 3)
    assert count_round_trips(conn, checkout)[1:] == (3, 3)
    assert [(e["app_user_id"], e["request_id"]) for e in note_events(notes)] == (
        [("alice", "req-a")] * 3 + [("alice", "req-c")] * 4 + [(None, None)] * 4)


def test_a_new_connection_is_never_assumed_clean(app_dsn: str, notes: Conn, cluster: Any) -> None:
    # A role default would be in every new session; the first checkout must overwrite it.
    with cluster.admin() as admin:
        admin.execute("ALTER ROLE audit_mw_test_app SET audit.user_id = 'role-default'")
    try:
        with AuditPool(app_dsn, min_size=1, max_size=1) as pool:
            assert settings_after_return(pool) == EMPTY_SETTINGS
    finally:
        with cluster.admin() as admin:
            admin.execute("ALTER ROLE audit_mw_test_app RESET audit.user_id")


def test_an_invalid_context_mode_is_refused(app_dsn: str) -> None:
    with pytest.raises(ConfigurationError, match="context_mode must be one of"):
        AuditPool(app_dsn, context_mode="statement", open=False)  # type: ignore[arg-type]


# -- the helper for connections managed by the application ------------------------------


def test_apply_context_on_a_connection_of_ones_own(app_dsn: str, notes: Conn) -> None:
    with psycopg.connect(app_dsn) as conn:
        assert apply_context(conn, ALICE) is ALICE
        conn.execute(INSERT_NOTE, ["session", None])
        conn.commit()
        conn.execute(INSERT_NOTE, ["rolled back", None])
        conn.rollback()  # the context was committed before: it survives
        conn.execute(INSERT_NOTE, ["after rollback", None])
        conn.commit()
        # Already carried: nothing is sent.
        assert count_round_trips(conn, lambda: apply_context(conn, ALICE))[1] == 0

        conn.execute("SELECT 1")
        with pytest.raises(ConfigurationError, match="would undo it"):
            apply_context(conn, ANON)
        apply_context(conn, ANON, local=True)
        conn.execute(INSERT_NOTE, ["local", None])
        conn.commit()
        conn.execute(INSERT_NOTE, ["back to session", None])
        conn.commit()

        conn.autocommit = True
        with pytest.raises(ConfigurationError, match="does nothing on an autocommit"):
            apply_context(conn, ANON, local=True)
        with audit_context(user_id="job:x"):
            apply_context(conn)
        conn.execute(INSERT_NOTE, ["current", None])

    assert users_by_author(notes) == {
        "session": {"alice"}, "after rollback": {"alice"}, "local": {"anonymous"},
        "back to session": {"alice"}, "current": {"job:x"},
    }


def test_aapply_context_on_a_connection_of_ones_own(app_dsn: str, notes: Conn) -> None:
    async def main() -> dict[str, str]:
        async with await psycopg.AsyncConnection.connect(app_dsn) as conn:
            await aapply_context(conn, ALICE)
            await conn.execute(INSERT_NOTE, ["session", None])
            await conn.rollback()
            await conn.execute(INSERT_NOTE, ["after rollback", None])
            await conn.commit()
            await aapply_context(conn, ANON, local=True)
            return await read_settings_async(conn)

    assert asyncio.run(main()) == ANON.settings()
    assert users_by_author(notes) == {"after rollback": {"alice"}}


# -- the async pool ----------------------------------------------------------------------


def test_async_pool_attributes_and_never_leaks(app_dsn: str, notes: Conn) -> None:
    async def main() -> list[dict[str, str]]:
        seen = []
        async with AsyncAuditPool(app_dsn, min_size=1, max_size=1, open=False) as pool:
            async with audit_context(ALICE), pool.connection() as conn:
                await conn.execute(INSERT_NOTE, ["alice", None])
                await conn.rollback()
                await conn.execute(INSERT_NOTE, ["alice after rollback", None])
            async with pool.connection() as conn:
                seen.append(await read_settings_async(conn))

            # Cancelled while holding the connection, in the middle of a statement.
            async def slow() -> None:
                async with audit_context(ALICE), pool.connection() as conn:
                    await conn.execute(INSERT_NOTE, ["alice cancelled", None])
                    await conn.execute("SELECT pg_sleep(5)")

            task = asyncio.create_task(slow())
            await asyncio.sleep(0.3)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            async with audit_context(ANON), pool.connection() as conn:
                await conn.execute(INSERT_NOTE, ["anonymous", None])
            async with pool.connection() as conn:
                seen.append(await read_settings_async(conn))
                await conn.execute(INSERT_NOTE, ["nobody", None])
        return seen

    assert asyncio.run(main()) == [EMPTY_SETTINGS, EMPTY_SETTINGS]
    assert users_by_author(notes) == {
        "alice after rollback": {"alice"}, "anonymous": {"anonymous"}, "nobody": {None},
    }


def test_async_checkout_cancelled_while_applying_returns_the_connection(
    app_dsn: str, notes: Conn
) -> None:
    async def main() -> dict[str, str]:
        async with AsyncAuditPool(app_dsn, min_size=1, max_size=1, open=False) as pool:
            # Cancelled at various points of the checkout, the apply included; some of the
            # later ones may finish first, which is fine too.
            for step in range(40):
                async def checkout(step: int = step) -> None:
                    # A new request id each time, so that every checkout has to apply.
                    context = AuditContext(user_id="alice", request_id=f"req-{step}")
                    async with audit_context(context), pool.connection() as conn:
                        await conn.execute(INSERT_NOTE, ["alice", None])

                task = asyncio.create_task(checkout())
                for _ in range(step):
                    await asyncio.sleep(0)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            async with audit_context(ANON), pool.connection(timeout=5) as conn:
                await conn.execute(INSERT_NOTE, ["anonymous", None])
            async with pool.connection(timeout=5) as conn:
                return await read_settings_async(conn)

    assert asyncio.run(main()) == EMPTY_SETTINGS
    assert users_by_author(notes)["anonymous"] == {"anonymous"}


# -- transaction mode (for transaction poolers) ------------------------------------------


@pytest.mark.parametrize("autocommit", [False, True])
def test_transaction_mode_attributes_each_statement_and_leaves_no_session_state(
    app_dsn: str, notes: Conn, autocommit: bool
) -> None:
    with AuditPool(app_dsn, min_size=1, max_size=1, context_mode="transaction",
                   kwargs={"autocommit": autocommit}) as pool:
        with audit_context(ALICE), pool.connection() as conn:
            assert isinstance(conn.cursor(), AuditCursor)
            conn.execute(INSERT_NOTE, ["one", None])
            with conn.transaction():
                conn.execute(INSERT_NOTE, ["two", None])
                conn.cursor().executemany(INSERT_NOTE, [["many", None], ["many", None]])
            with pytest.raises(psycopg.errors.DivisionByZero):
                fail_in_transaction(conn)
            conn.execute(INSERT_NOTE, ["three", None])
            with conn.transaction(), conn.cursor().copy(
                    "COPY notes (author) FROM STDIN") as copy:
                copy.write_row(["copied"])
            with conn.transaction():
                rows = list(conn.cursor().stream("SELECT author FROM notes ORDER BY id"))
                assert rows[0] == ("one",)
            if not autocommit:
                conn.commit()
            else:
                with pytest.raises(ConfigurationError, match="needs an open transaction"):
                    list(conn.cursor().stream("SELECT 1"))
            # Nothing at session level: outside a transaction the settings are empty.
            conn.commit()
            conn.autocommit = True
            assert read_settings(conn) == EMPTY_SETTINGS
            conn.autocommit = autocommit
        # Back in the pool, the connection has its own cursors again (for the pool's checks).
        assert [c.cursor_factory for c in pool._pool] == [psycopg.Cursor]

    users = users_by_author(notes)
    assert users == {author: {"alice"} for author in ("one", "two", "many", "three", "copied")}


def test_transaction_mode_keeps_the_applications_cursor_factory(
    app_dsn: str, notes: Conn
) -> None:
    for factory in (ClientCursor, RawCursor):
        with AuditPool(app_dsn, min_size=1, max_size=1, context_mode="transaction",
                       kwargs={"cursor_factory": factory}) as pool:
            with audit_context(ALICE), pool.connection() as conn:
                cur = conn.cursor()
                assert isinstance(cur, AuditCursor)
                assert isinstance(cur, factory)
                placeholder = "$1, $2" if factory is RawCursor else "%s, %s"
                cur.execute(f"INSERT INTO notes (author, request_id) VALUES ({placeholder})",
                            [factory.__name__, None])
            assert [c.cursor_factory for c in pool._pool] == [factory]
    assert users_by_author(notes) == {"ClientCursor": {"alice"}, "RawCursor": {"alice"}}


def test_transaction_mode_costs_no_extra_round_trip(app_dsn: str, notes: Conn) -> None:
    with psycopg.connect(app_dsn) as plain:
        plain.execute("SELECT 1")
        plain.commit()

        def write(conn: Conn) -> None:
            conn.execute(INSERT_NOTE, ["x", None])
            conn.commit()

        baseline = count_round_trips(plain, lambda: write(plain))[1]

        def write_twice(conn: Conn) -> None:
            conn.execute(INSERT_NOTE, ["x", None])
            conn.execute(INSERT_NOTE, ["y", None])
            conn.commit()

        twice = count_round_trips(plain, lambda: write_twice(plain))[1:]

    assert (baseline, twice) == (3, (4, 4))
    pool = AuditPool(app_dsn, min_size=1, max_size=1, context_mode="transaction")
    with pool, audit_context(ALICE), pool.connection() as conn:
        # In every transaction, the five settings as SET LOCAL in the BEGIN's own message;
        # nothing with the later statements of the transaction.
        for _ in range(2):
            _, lines = protocol_trace(conn, lambda: write_twice(conn))
            (begin,) = [q for q in sent_queries(lines) if "BEGIN" in q]
            assert begin.startswith('"BEGIN; SET LOCAL "audit"."user_id" = \'alice\'; ')
            assert begin.count("SET LOCAL") == 5
            assert count_round_trips(conn, lambda: write_twice(conn))[1:] == twice
        assert count_round_trips(conn, lambda: write(conn))[1:] == (baseline, baseline)
        # With pipeline_begin, one pipeline (one Sync) for BEGIN, settings and INSERT.
    with AuditPool(app_dsn, min_size=1, max_size=1, context_mode="transaction",
                   pipeline_begin=True) as pool, audit_context(ALICE), pool.connection() as conn:
        assert count_round_trips(conn, lambda: write(conn))[1] == baseline - 1
