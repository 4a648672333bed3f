"""The context travels with the statements: late users, nested contexts, own connections."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import AsyncClientCursor, ClientCursor, RawCursor

from audit_mw.context import AuditContext, audit_context, set_user
from audit_mw.pool import (
    AsyncAuditClientCursor,
    AsyncAuditPool,
    AuditClientCursor,
    AuditCursor,
    AuditPool,
    forget_context,
    instrument_connection,
)
from tests._pool import (
    EMPTY_SETTINGS,
    INSERT_NOTE,
    attribution,
    count_round_trips,
    note_events,
    read_settings,
    read_settings_async,
)

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]


@pytest.fixture
def pool(app_dsn: str, notes: Conn) -> Iterator[AuditPool]:
    with AuditPool(app_dsn, min_size=1, max_size=1, timeout=10) as pool:
        yield pool


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_user_set_after_checkout_and_after_a_first_query_is_on_every_later_write(
    app_dsn: str, notes: Conn, autocommit: bool
) -> None:
    with AuditPool(app_dsn, min_size=1, max_size=1, kwargs={"autocommit": autocommit}) as pool:
        with audit_context(user_id="anonymous", request_id="req-1"), pool.connection() as conn:
            # The ORM loads the session and the user through the same connection...
            conn.execute("SELECT 1")
            conn.execute(INSERT_NOTE, ["anonymous", "req-1"])
            set_user("alice")  # ... and only then does the app know who it is.
            conn.execute(INSERT_NOTE, ["alice", "req-1"])
            if not autocommit:
                conn.commit()
            conn.execute(INSERT_NOTE, ["alice", "req-1"])
            with conn.transaction():
                conn.execute(INSERT_NOTE, ["alice", "req-1"])
            conn.cursor().executemany(INSERT_NOTE, [["alice", "req-1"]] * 2)
            with conn.transaction(), conn.cursor().copy("COPY notes (author) FROM STDIN") as copy:
                copy.write_row(["alice"])
            if not autocommit:
                conn.commit()
        with pool.connection() as conn:
            assert read_settings(conn) == EMPTY_SETTINGS
    assert attribution(notes) == [("anonymous", "anonymous")] + [("alice", "alice")] * 6


@pytest.mark.parametrize("autocommit", [False, True])
def test_a_nested_context_attributes_inside_it_to_the_inner_identity_and_after_to_the_outer(
    app_dsn: str, notes: Conn, autocommit: bool
) -> None:
    pool = AuditPool(app_dsn, min_size=1, max_size=1, kwargs={"autocommit": autocommit})
    with pool, audit_context(user_id="outer"), pool.connection() as conn:
        conn.execute(INSERT_NOTE, ["outer", None])
        with audit_context(user_id="inner"):
            conn.execute(INSERT_NOTE, ["inner", None])
            conn.execute(INSERT_NOTE, ["inner", None])
        conn.execute(INSERT_NOTE, ["outer", None])
        # The same inside one transaction: transaction-local, and back to the outer.
        with conn.transaction():
            conn.execute(INSERT_NOTE, ["outer", None])
            with audit_context(user_id="inner"):
                conn.execute(INSERT_NOTE, ["inner", None])
            conn.execute(INSERT_NOTE, ["outer", None])
        conn.execute(INSERT_NOTE, ["outer", None])
        if not autocommit:
            conn.commit()
    assert attribution(notes) == [
        ("outer", "outer"), ("inner", "inner"), ("inner", "inner"), ("outer", "outer"),
        ("outer", "outer"), ("inner", "inner"), ("outer", "outer"), ("outer", "outer"),
    ]


def test_a_rollback_never_brings_back_a_previous_context(pool: AuditPool, notes: Conn) -> None:
    with audit_context(user_id="alice"), pool.connection() as conn:
        conn.execute(INSERT_NOTE, ["alice", None])
        conn.commit()
    with audit_context(user_id="bob"), pool.connection() as conn:
        # The settings went first, committed on their own: the rollback leaves them.
        conn.execute(INSERT_NOTE, ["rolled back", None])
        conn.rollback()
        conn.execute(INSERT_NOTE, ["bob", None])
        conn.commit()
        conn.execute("SELECT 1")
        # Changed inside a transaction: transaction-local; a rollback returns to bob, and
        # bob, known at session level, is sent no more.
        set_user("carol")
        conn.execute(INSERT_NOTE, ["carol, rolled back", None])
        conn.rollback()
        with audit_context(user_id="bob"):
            conn.execute(INSERT_NOTE, ["bob", None])
            conn.commit()
        # Changed in a savepoint that is rolled back: still carol after it.
        with conn.transaction():
            conn.execute(INSERT_NOTE, ["carol", None])
            with pytest.raises(psycopg.errors.DivisionByZero):
                write_then_fail(conn, "dave")
            conn.execute(INSERT_NOTE, ["carol", None])
        conn.commit()
    assert attribution(notes) == [
        ("alice", "alice"), ("bob", "bob"), ("bob", "bob"), ("carol", "carol"),
        ("carol", "carol"),
    ]


def write_then_fail(conn: Conn, user: str) -> None:
    with conn.transaction(), audit_context(user_id=user):
        conn.execute(INSERT_NOTE, [f"{user}, rolled back", None])
        conn.execute("SELECT 1/0")


def test_a_failed_first_statement_leaves_no_wrong_context(pool: AuditPool, notes: Conn) -> None:
    with audit_context(user_id="alice"), pool.connection() as conn:
        conn.execute(INSERT_NOTE, ["alice", None])
    with pytest.raises(psycopg.errors.UndefinedTable), audit_context(user_id="bob"), \
            pool.connection() as conn:
        conn.execute("INSERT INTO no_such_table VALUES (1)")
    with pool.connection() as conn:
        assert read_settings(conn) == EMPTY_SETTINGS
        conn.execute(INSERT_NOTE, ["nobody", None])
    assert attribution(notes) == [("alice", "alice"), ("nobody", None)]


def test_cursors_built_by_hand_and_server_side_cursors_carry_it_too(
    pool: AuditPool, notes: Conn
) -> None:
    with audit_context(user_id="alice"), pool.connection() as conn:
        psycopg.Cursor(conn).execute(INSERT_NOTE, ["alice", None])
        with audit_context(user_id="bob"):
            with conn.cursor("named") as named:
                named.execute("SELECT current_setting('audit.user_id')")
                assert named.fetchone() == ("bob",)
            ClientCursor(conn).execute(INSERT_NOTE, ["bob", None])
        conn.commit()
    assert attribution(notes) == [("alice", "alice"), ("bob", "bob")]


def test_an_instrumented_connection_of_ones_own(app_dsn: str, notes: Conn) -> None:
    with psycopg.connect(app_dsn, cursor_factory=ClientCursor) as conn:
        assert instrument_connection(conn) is conn
        assert instrument_connection(conn) is conn  # again: harmless
        assert type(conn.cursor()) is AuditClientCursor
        for user in ("alice", "bob", "bob", "carol"):
            with audit_context(user_id=user):
                conn.execute(INSERT_NOTE, [user, None])
                conn.commit()
        # Something behind the package's back: forget, and it is sent again.
        conn.execute("RESET ALL")
        conn.commit()
        forget_context(conn)
        with audit_context(user_id="carol"):
            conn.execute(INSERT_NOTE, ["carol", None])
            conn.commit()
    with psycopg.connect(app_dsn, cursor_factory=RawCursor, autocommit=True) as conn:
        instrument_connection(conn)
        cur = conn.cursor()
        assert isinstance(cur, AuditCursor)
        assert isinstance(cur, RawCursor)
        with audit_context(user_id="raw"):
            cur.execute("INSERT INTO notes (author) VALUES ($1)", ["raw"])
    assert attribution(notes) == [
        ("alice", "alice"), ("bob", "bob"), ("bob", "bob"), ("carol", "carol"),
        ("carol", "carol"), ("raw", "raw"),
    ]


def test_an_unchanged_context_sends_nothing(app_dsn: str, notes: Conn) -> None:
    with psycopg.connect(app_dsn, prepare_threshold=None) as conn:
        instrument_connection(conn)
        with audit_context(user_id="alice"):
            conn.execute(INSERT_NOTE, ["alice", None])
            conn.commit()

            def write() -> None:
                conn.execute(INSERT_NOTE, ["alice", None])
                conn.commit()

            # BEGIN, INSERT, COMMIT: what a plain connection sends.
            assert count_round_trips(conn, write)[1:] == (3, 3)
            set_user("bob")
            # A new context rides in the BEGIN's own message: what a plain connection sends.
            assert count_round_trips(conn, write)[1:] == (3, 3)
            assert count_round_trips(conn, write)[1:] == (3, 3)
            # Used by a third transaction in a row: set at session level, synced on its own
            # ahead of the BEGIN, in the same round trip (counted on the wire in
            # test_pool_round_trips.py); from then on, nothing.
            assert count_round_trips(conn, write)[1] == 4
            assert count_round_trips(conn, write)[1:] == (3, 3)
    assert [e["app_user_id"] for e in note_events(notes)] == ["alice"] * 2 + ["bob"] * 4


def test_async_connections_and_pools(app_dsn: str, notes: Conn) -> None:
    async def main() -> None:
        conn = await psycopg.AsyncConnection.connect(app_dsn, cursor_factory=AsyncClientCursor)
        async with conn:
            instrument_connection(conn)
            assert type(conn.cursor()) is AsyncAuditClientCursor
            async with audit_context(user_id="anonymous"):
                await conn.execute(INSERT_NOTE, ["anonymous", None])
                set_user("alice")
                await conn.execute(INSERT_NOTE, ["alice", None])
                await conn.commit()
        pool = AsyncAuditPool(app_dsn, min_size=1, max_size=1, open=False)
        async with pool, audit_context(user_id="anonymous"), pool.connection() as conn2:
            await conn2.execute("SELECT 1")
            set_user("bob")
            await conn2.execute(INSERT_NOTE, ["bob", None])
            async with audit_context(user_id="inner"):
                await conn2.execute(INSERT_NOTE, ["inner", None])
            await conn2.execute(INSERT_NOTE, ["bob", None])

    asyncio.run(main())
    assert attribution(notes) == [
        ("anonymous", "anonymous"), ("alice", "alice"), ("bob", "bob"), ("inner", "inner"),
        ("bob", "bob"),
    ]


def test_an_isolation_level_is_kept_when_begin_rides_with_the_settings(
    app_dsn: str, notes: Conn
) -> None:
    with psycopg.connect(app_dsn) as conn:
        conn.isolation_level = psycopg.IsolationLevel.SERIALIZABLE
        conn.read_only = True
        instrument_connection(conn)
        with audit_context(AuditContext(user_id="alice")):
            row = conn.execute("SELECT current_setting('transaction_isolation'),"
                               " current_setting('transaction_read_only')").fetchone()
        assert row == ("serializable", "on")


def test_a_cancelled_or_broken_first_statement_leaves_no_context_for_the_next_borrower(
    app_dsn: str, notes: Conn
) -> None:
    async def main() -> list[dict[str, str]]:
        seen = []
        async with AsyncAuditPool(app_dsn, min_size=1, max_size=1, open=False) as pool:
            async def slow(user: str) -> None:
                # The settings travel with this very statement, which never finishes.
                async with audit_context(user_id=user), pool.connection() as c:
                    await c.execute("SELECT pg_sleep(5)")

            for user in ("alice", "bob"):
                task = asyncio.create_task(slow(user))
                await asyncio.sleep(0.3)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                async with pool.connection(timeout=10) as c:
                    seen.append(await read_settings_async(c))
                    await c.execute(INSERT_NOTE, ["nobody", None])

            async def broken() -> None:
                async with audit_context(user_id="carol"), pool.connection() as c:
                    await c.execute("SELECT pg_terminate_backend(pg_backend_pid())")

            with pytest.raises(psycopg.OperationalError):
                await broken()
            async with pool.connection(timeout=10) as c:
                seen.append(await read_settings_async(c))
                await c.execute(INSERT_NOTE, ["nobody", None])
            async with audit_context(user_id="dave"), pool.connection() as c:
                await c.execute(INSERT_NOTE, ["dave", None])
        return seen

    assert asyncio.run(main()) == [EMPTY_SETTINGS] * 3
    assert attribution(notes) == [("nobody", None)] * 3 + [("dave", "dave")]


@pytest.mark.parametrize("autocommit", [False, True])
def test_inside_the_applications_own_pipeline(
    app_dsn: str, notes: Conn, autocommit: bool
) -> None:
    with psycopg.connect(app_dsn, autocommit=autocommit) as conn:
        instrument_connection(conn)
        with audit_context(user_id="alice"):
            with conn.pipeline():
                conn.execute(INSERT_NOTE, ["alice", None])
                with audit_context(user_id="bob"):
                    conn.execute(INSERT_NOTE, ["bob", None])
                    conn.cursor().executemany(INSERT_NOTE, [["bob", None]] * 2)
                conn.execute(INSERT_NOTE, ["alice", None])
            conn.execute(INSERT_NOTE, ["alice", None])
            conn.commit()
        with audit_context(user_id="carol"), conn.pipeline():
            conn.execute(INSERT_NOTE, ["carol", None])
        conn.commit()
        assert read_settings(conn) == EMPTY_SETTINGS
    assert attribution(notes) == [
        ("alice", "alice"), ("bob", "bob"), ("bob", "bob"), ("bob", "bob"),
        ("alice", "alice"), ("alice", "alice"), ("carol", "carol"),
    ]


def test_a_reset_callback_makes_the_pool_forget_what_the_connection_holds(
    app_dsn: str, notes: Conn
) -> None:
    def reset(conn: Conn) -> None:
        conn.execute("RESET ALL")
        conn.commit()

    alice = AuditContext(user_id="alice", request_id="req-1")
    with AuditPool(app_dsn, min_size=1, max_size=1, reset=reset) as pool:
        for _ in range(2):  # the same context twice: the second one must be sent again
            with audit_context(alice), pool.connection() as conn:
                conn.execute(INSERT_NOTE, ["alice", None])
    assert attribution(notes) == [("alice", "alice")] * 2


def test_transaction_mode_covers_server_side_cursors_and_leaves_nothing_in_the_session(
    app_dsn: str, notes: Conn
) -> None:
    pool = AuditPool(app_dsn, min_size=1, max_size=1, context_mode="transaction")
    with pool, audit_context(user_id="alice"), pool.connection() as conn:
        with conn.cursor("named") as named:
            named.execute("SELECT current_setting('audit.user_id')")
            assert named.fetchone() == ("alice",)
        conn.commit()
        with audit_context(user_id="bob"):
            psycopg.Cursor(conn).execute(INSERT_NOTE, ["bob", None])
            conn.commit()
        conn.autocommit = True
        assert read_settings(conn) == EMPTY_SETTINGS  # nothing at session level
    assert attribution(notes) == [("bob", "bob")]


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_set_transaction_stays_the_first_statement_of_its_transaction(
    app_dsn: str, notes: Conn, mode: str
) -> None:
    with psycopg.connect(app_dsn) as conn:
        instrument_connection(conn, context_mode=mode)  # type: ignore[arg-type]
        with audit_context(user_id="alice"):
            conn.execute(INSERT_NOTE, ["alice", None])
            conn.commit()
            set_user("bob")  # changed: inside a transaction it would go transaction-local
            for statement in (
                "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY",
                psycopg.sql.SQL("SET transaction_isolation = 'serializable'"),
                b"  set transaction isolation level serializable",
                "-- one snapshot\n/* for the count\n and the rows */"
                " SET TRANSACTION ISOLATION LEVEL SERIALIZABLE;",
            ):
                with conn.transaction():
                    conn.execute(statement)
                    assert conn.execute("SHOW transaction_isolation").fetchone() in (
                        ("repeatable read",), ("serializable",))
                    assert read_settings(conn)["audit.user_id"] == "bob"
            with conn.transaction():
                conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
                conn.execute(INSERT_NOTE, ["bob", None])
    assert attribution(notes) == [("alice", "alice"), ("bob", "bob")]


def test_statements_that_cannot_run_in_a_transaction_block_in_transaction_mode(
    dsn: str, notes: Conn
) -> None:
    # The owner's connection: the application role may not index the table.
    with psycopg.connect(dsn, autocommit=True) as conn:
        instrument_connection(conn, context_mode="transaction")
        with audit_context(user_id="alice"):
            conn.execute("-- keep it small\nVACUUM notes")
            conn.execute("CREATE INDEX CONCURRENTLY notes_author ON notes (author)")
            conn.execute("DROP INDEX CONCURRENTLY notes_author")
            conn.execute(INSERT_NOTE, ["alice", None])
    assert attribution(notes) == [("alice", "alice")]
