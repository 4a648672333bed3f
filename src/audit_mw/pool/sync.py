"""The threaded audit-aware pool, :class:`AuditPool`, and :func:`apply_context`.

Generated from ``pool/async_.py`` by ``tools/async_to_sync.py``: do not edit;
change the async source and regenerate.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from psycopg import ClientCursor, Connection, Copy, Cursor, pq
from psycopg.abc import Params, Query, QueryNoTemplate
from psycopg.copy import Writer
from psycopg.rows import Row
from psycopg_pool import ConnectionPool
from psycopg_pool.abc import CT, ConninfoParam

from audit_mw.context import AuditContext, current
from audit_mw.pool._base import (
    ContextMode,
    apply_statement,
    check_local_apply,
    check_mode,
    check_session_apply,
    derive_cursor_class,
    register_cursor_class,
    underlying_cursor_class,
)
from audit_mw.pool._carry import (
    after_statement,
    confirm,
    expect,
    forget_context,
    hold,
    install_hook,
    leads_transaction,
    must_send,
    refuse_unattributed,
    state_of,
    streaming,
    suspend_context,
)

__all__ = [
    "AuditClientCursor",
    "AuditCursor",
    "AuditPool",
    "apply_context",
]

_PIPELINE_OFF = pq.PipelineStatus.OFF


class AuditPool(ConnectionPool[CT]):
    """A :class:`psycopg_pool.ConnectionPool` that attributes every change it carries.

    Every statement run on a checked-out connection (``connection()`` or ``getconn()``)
    carries the audit context that is current in the borrowing thread
    (:func:`audit_mw.context.current`) when it runs, in the same network round trip as
    the statement, and only when the connection does not already carry it. A context that
    changes during the checkout (``set_user()``, a nested ``audit_context``) is carried by
    the next statement. Takes every argument of ``ConnectionPool``, plus
    ``context_mode`` and ``pipeline_begin``.

    ``context_mode="session"`` (default)
        A new context travels in the message of the ``BEGIN`` that starts the transaction,
        as ``SET LOCAL`` of each setting the session does not hold already: no round trip
        of its own, no ``ROLLBACK TO SAVEPOINT`` can undo it, and it is gone at the end of
        the transaction. The first context of a connection, and one that a third
        transaction in a row uses, is set at session level, committed on its own before the
        ``BEGIN``, so that no rollback undoes it; then nothing is sent while it stays the
        same (across checkouts too). Without a ``BEGIN`` (autocommit), or when the context
        changes inside a transaction, the settings go in a pipeline in front of the
        statement.

    ``context_mode="transaction"``
        For a transaction pooler such as PgBouncer with ``pool_mode = transaction``,
        where session settings would leak to other clients: the context is sent,
        transaction-local, with the first statement of each transaction (and again when
        it changes), never at session level.

    ``pipeline_begin=True``
        A new context's ``BEGIN`` travels in a pipeline with the settings and the first
        statement instead: one round trip fewer for that transaction, for a database
        across a network, at the cost of client CPU that a local socket does not repay.

    See ``docs/pools.md`` for what is covered. The pool's own callbacks keep their meaning
    (``configure``, ``check``, ``reset``); this class uses none of them.
    """

    def __init__(
        self,
        conninfo: ConninfoParam = "",
        *,
        context_mode: ContextMode = "session",
        pipeline_begin: bool = False,
        **kwargs: Any,
    ) -> None:
        self.context_mode: ContextMode = check_mode(context_mode)
        self.pipeline_begin = bool(pipeline_begin)
        super().__init__(conninfo, **kwargs)

    def getconn(self, timeout: float | None = None) -> CT:
        """Obtain a connection whose statements carry the audit context (see the class doc)."""
        conn = super().getconn(timeout)
        # No I/O here: the context travels with the first statement that needs it.
        install_hook(conn, self.context_mode, self.pipeline_begin).active = True
        conn.cursor_factory = derive_cursor_class(AuditCursor, conn.cursor_factory)
        return conn

    def putconn(self, conn: CT) -> None:
        """Return a connection to the pool (see ``ConnectionPool.putconn``)."""
        # The pool's own checks and resets run with the connection's own cursors again,
        # and carry no context.
        suspend_context(conn)
        if self._reset is not None:
            # It may run RESET ALL or DISCARD ALL: what the connection carries is unknown.
            forget_context(conn)
        conn.cursor_factory = underlying_cursor_class(
            AuditCursor, Cursor, conn.cursor_factory
        )
        super().putconn(conn)


def apply_context(
    conn: Connection[Any], context: AuditContext | None = None, *, local: bool = False
) -> AuditContext:
    """Apply ``context`` (default: the current one) to a connection now, in a round trip.

    For a connection that is not instrumented (an instrumented one carries the current
    context with its statements by itself, see :func:`instrument_connection`). With
    ``local=False`` (session level) the connection must not be in a transaction: the
    context is applied in autocommit, so that it holds for everything that follows on this
    connection until the next apply; nothing is sent when the connection already carries
    this context. With ``local=True`` it holds until the end of the current transaction,
    which is opened if needed (not in autocommit mode). Returns the context applied.
    """
    context = current() if context is None else context
    state = state_of(conn)
    if local:
        check_local_apply(conn)
        state.dirty = True
        _execute(conn, apply_statement(True), context.setting_values(), prepare=False)
        return context
    check_session_apply(conn)
    known = state.known
    if known is not None and (known is context or known == context):
        return context
    state.known = None
    values = context.setting_values()
    if conn.autocommit:
        _execute(conn, apply_statement(False), values, prepare=None)
    else:
        # Autocommit for this one statement: committed at once, beyond any later rollback.
        conn.set_autocommit(True)
        try:
            _execute(conn, apply_statement(False), values, prepare=None)
        finally:
            # The connection may be broken; the error that says so is the one to raise.
            with suppress(Exception):
                conn.set_autocommit(False)
    state.known = context
    return context


def _execute(
    conn: Connection[Any], statement: bytes, values: Params, *, prepare: bool | None
) -> None:
    # A plain cursor, never the connection's factory (which may be AuditCursor).
    with Cursor(conn) as cur:
        cur.execute(statement, values, prepare=prepare)


class AuditCursor(Cursor[Row]):
    """A cursor whose statements carry the current audit context, with no round trip of its own.

    When the connection does not carry the current context, ``execute`` runs the statement
    in a pipeline with the settings in front of it: one network round trip for both.
    ``executemany`` rides psycopg's own pipeline. ``copy`` and ``stream`` cannot be
    pipelined: the settings go first, with the ``BEGIN`` when one is due. Works on an
    instrumented connection (:func:`instrument_connection`, or a pool's checkout);
    elsewhere it is a plain cursor.
    """

    def execute(  # type: ignore[override]  # no t-string overload: Python 3.14 only
        self,
        query: QueryNoTemplate,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> AuditCursor[Row]:
        conn = self._conn
        if leads_transaction(conn, query):
            # SET TRANSACTION must come first in its transaction: nothing local before it.
            hold(conn, True)
            try:
                self._execute_carrying(query, params, prepare=prepare, binary=binary)
            finally:
                hold(conn, False)
            return self
        self._execute_carrying(query, params, prepare=prepare, binary=binary)
        return self

    def _execute_carrying(
        self,
        query: QueryNoTemplate,
        params: Params | None,
        *,
        prepare: bool | None,
        binary: bool | None,
    ) -> None:
        conn = self._conn
        if conn.pgconn.pipeline_status == _PIPELINE_OFF and must_send(conn):
            expect(conn)
            with conn.pipeline():
                super().execute(query, params, prepare=prepare, binary=binary)
            confirm(conn)
        else:
            super().execute(query, params, prepare=prepare, binary=binary)
        after_statement(conn, self._results)

    def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        conn = self._conn
        own_pipeline = conn.pgconn.pipeline_status == _PIPELINE_OFF
        if own_pipeline:
            expect(conn)  # psycopg's own pipeline, begun and ended inside executemany()
        super().executemany(query, params_seq, returning=returning)
        if own_pipeline:
            confirm(conn)

    def stream(
        self,
        query: Query,
        params: Params | None = None,
        *,
        binary: bool | None = None,
        size: int = 1,
    ) -> Iterator[Row]:
        refuse_unattributed(self._conn, "stream()")
        try:
            yield from super().stream(query, params, binary=binary, size=size)
        finally:
            streaming(self._conn)

    @contextmanager
    def copy(
        self, statement: Query, params: Params | None = None, *, writer: Writer | None = None
    ) -> Iterator[Copy]:
        refuse_unattributed(self._conn, "copy()")
        with super().copy(statement, params, writer=writer) as copy:
            yield copy


class AuditClientCursor(AuditCursor[Row], ClientCursor[Row]):
    """:class:`AuditCursor` over psycopg's ``ClientCursor`` (client-side binding)."""


register_cursor_class(AuditCursor, ClientCursor, AuditClientCursor)

