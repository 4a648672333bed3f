"""The asyncio audit-aware pool, :class:`AsyncAuditPool`, and :func:`aapply_context`.

This file is the source: ``sync.py`` is generated from it by ``tools/async_to_sync.py``
(run ``python tools/async_to_sync.py --check`` to verify the twin is current). Keep the
logic in ``_base.py``; here only the I/O.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager, suppress
from typing import Any

from psycopg import AsyncConnection, AsyncCopy, AsyncCursor, pq
from psycopg.abc import Params, Query, QueryNoTemplate
from psycopg.copy import AsyncWriter
from psycopg.rows import Row
from psycopg_pool import AsyncConnectionPool
from psycopg_pool.abc import ACT, AsyncConninfoParam

from audit_mw.context import AuditContext, current
from audit_mw.errors import ConfigurationError
from audit_mw.pool._base import (
    ContextMode,
    apply_statement,
    check_local_apply,
    check_mode,
    check_session_apply,
    derive_cursor_class,
    forget,
    is_applied,
    remember,
    setting_values,
    underlying_cursor_class,
)

__all__ = ["AsyncAuditCursor", "AsyncAuditPool", "aapply_context"]


class AsyncAuditPool(AsyncConnectionPool[ACT]):
    """A :class:`psycopg_pool.AsyncConnectionPool` that attributes every change it carries.

    Every checkout (``connection()`` or ``getconn()``) carries the audit context that is
    current in the borrowing task (:func:`audit_mw.context.current`) to the database,
    where the capture triggers read it. Takes every argument of ``AsyncConnectionPool``,
    plus ``context_mode``:

    ``"session"`` (default)
        On checkout, the context is applied at session level, committed at once, in one
        round trip; none when the connection already carries this very context. It then
        holds for every statement of the checkout: autocommit or not, over several
        transactions, after a rollback. Each checkout overwrites every setting, so no
        borrower ever runs with another borrower's context.

    ``"transaction"``
        For a transaction pooler such as PgBouncer with ``pool_mode = transaction``,
        where session settings would leak to other clients. Nothing is sent on checkout;
        instead the connection's cursors send the context, transaction-local, in the same
        pipeline as each statement. See ``docs/pools.md`` for what is covered.

    The pool's own callbacks keep their meaning (``configure``, ``check``, ``reset``);
    this class uses none of them.
    """

    def __init__(
        self,
        conninfo: AsyncConninfoParam = "",
        *,
        context_mode: ContextMode = "session",
        **kwargs: Any,
    ) -> None:
        self.context_mode: ContextMode = check_mode(context_mode)
        super().__init__(conninfo, **kwargs)

    async def getconn(self, timeout: float | None = None) -> ACT:
        """Obtain a connection, carrying the current audit context (see the class doc)."""
        conn = await super().getconn(timeout)
        try:
            if self.context_mode == "session":
                await _apply_session(conn, current(), prepare=None)
            else:
                conn.cursor_factory = derive_cursor_class(AsyncAuditCursor, conn.cursor_factory)
        except BaseException:
            # Also on cancellation: the connection goes back, what it carries is unknown.
            await self.putconn(conn)
            raise
        return conn

    async def putconn(self, conn: ACT) -> None:
        """Return a connection to the pool (see ``AsyncConnectionPool.putconn``)."""
        # The pool's own checks run with the connection's own cursors again.
        conn.cursor_factory = underlying_cursor_class(
            AsyncAuditCursor, AsyncCursor, conn.cursor_factory
        )
        await super().putconn(conn)


async def aapply_context(
    conn: AsyncConnection[Any], context: AuditContext | None = None, *, local: bool = False
) -> AuditContext:
    """Apply ``context`` (default: the current one) to a connection you manage yourself.

    With ``local=False`` (session level) the connection must not be in a transaction:
    the context is applied in autocommit, so that it holds for everything that follows
    on this connection until the next apply; nothing is sent when the connection already
    carries this context. With ``local=True`` it holds until the end of the current
    transaction, which is opened if needed (not in autocommit mode). Returns the context
    applied.
    """
    context = current() if context is None else context
    if local:
        check_local_apply(conn)
        await _execute(conn, apply_statement(True), setting_values(context), prepare=False)
    else:
        check_session_apply(conn)
        await _apply_session(conn, context, prepare=None)
    return context


async def _apply_session(
    conn: AsyncConnection[Any], context: AuditContext, *, prepare: bool | None
) -> None:
    if is_applied(conn, context):
        return
    forget(conn)
    values = setting_values(context)
    if conn.autocommit:
        await _execute(conn, apply_statement(False), values, prepare=prepare)
    else:
        # Autocommit for this one statement: committed at once, beyond any later rollback.
        await conn.set_autocommit(True)
        try:
            await _execute(conn, apply_statement(False), values, prepare=prepare)
        finally:
            # The connection may be broken; the error that says so is the one to raise.
            with suppress(Exception):
                await conn.set_autocommit(False)
    remember(conn, context)


async def _execute(
    conn: AsyncConnection[Any], statement: bytes, values: Params, *, prepare: bool | None
) -> None:
    # A plain cursor, never the connection's factory (which may be AsyncAuditCursor).
    async with AsyncCursor(conn) as cur:
        await cur.execute(statement, values, prepare=prepare)


class AsyncAuditCursor(AsyncCursor[Row]):
    """A cursor that sends the current audit context, transaction-local, with each statement.

    Installed by :class:`AsyncAuditPool` in ``"transaction"`` mode. ``execute`` and
    ``executemany`` send the context and the statement in one pipeline, in the same
    transaction (no extra round trip). ``copy`` and ``stream`` cannot be pipelined: they
    apply first, in the transaction they then run in, and refuse in autocommit mode.
    """

    async def execute(  # type: ignore[override]  # no t-string overload: Python 3.14 only
        self,
        query: QueryNoTemplate,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> AsyncAuditCursor[Row]:
        conn = self._conn
        if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            await _queue_local(conn)
            await super().execute(query, params, prepare=prepare, binary=binary)
            return self
        async with conn.pipeline():
            await _queue_local(conn)
            await super().execute(query, params, prepare=prepare, binary=binary)
        return self

    async def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        conn = self._conn
        if conn.pgconn.pipeline_status != pq.PipelineStatus.OFF:
            await _queue_local(conn)
            await super().executemany(query, params_seq, returning=returning)
            return
        async with conn.pipeline():
            await _queue_local(conn)
            await super().executemany(query, params_seq, returning=returning)

    async def stream(
        self,
        query: Query,
        params: Params | None = None,
        *,
        binary: bool | None = None,
        size: int = 1,
    ) -> AsyncIterator[Row]:
        await _apply_alone(self._conn, "stream()")
        async for record in super().stream(query, params, binary=binary, size=size):
            yield record

    @asynccontextmanager
    async def copy(
        self, statement: Query, params: Params | None = None, *, writer: AsyncWriter | None = None
    ) -> AsyncIterator[AsyncCopy]:
        await _apply_alone(self._conn, "copy()")
        async with super().copy(statement, params, writer=writer) as copy:
            yield copy


async def _queue_local(conn: AsyncConnection[Any]) -> None:
    # In pipeline mode this only queues: it travels with the statement that follows.
    # Not prepared: a transaction pooler may run the next one on another server session.
    await _execute(conn, apply_statement(True), setting_values(current()), prepare=False)


async def _apply_alone(conn: AsyncConnection[Any], what: str) -> None:
    if conn.autocommit and conn.pgconn.transaction_status == pq.TransactionStatus.IDLE:
        raise ConfigurationError(
            f"{what} in transaction context mode needs an open transaction, so that the"
            " audit context holds for it: run it inside conn.transaction()"
        )
    await _queue_local(conn)
