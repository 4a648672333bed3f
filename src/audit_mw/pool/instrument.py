"""Instrumenting a connection you manage yourself: :func:`instrument_connection`."""

from __future__ import annotations

from typing import Any, TypeVar

from psycopg import AsyncConnection, BaseConnection, Connection

from audit_mw.pool._base import ContextMode, derive_cursor_class
from audit_mw.pool._carry import forget_context, install_hook, suspend_context
from audit_mw.pool.async_ import AsyncAuditCursor
from audit_mw.pool.sync import AuditCursor

__all__ = ["forget_context", "instrument_connection", "suspend_context"]

C = TypeVar("C", bound=BaseConnection[Any])


def instrument_connection(
    conn: C, *, context_mode: ContextMode = "session", pipeline_begin: bool = False
) -> C:
    """Make every statement on ``conn`` carry the current audit context; return ``conn``.

    For a connection you manage yourself (an ORM's pool, a script), sync or async: from
    now on each statement carries :func:`audit_mw.context.current` when the connection
    does not already hold it, in the same round trip as the statement, as on a checkout
    of :class:`~audit_mw.pool.AuditPool` (see ``docs/pools.md``). The connection's cursor
    factory is replaced by one derived from it (``ClientCursor``, ``RawCursor`` and
    subclasses keep working): call this *after* anything that sets ``cursor_factory``.
    Calling it again is harmless. No I/O: the context travels with the next statement.
    ``context_mode`` and ``pipeline_begin`` are those of :class:`~audit_mw.pool.AuditPool`.

    Pair it with :func:`forget_context` when something outside the package may reset the
    session's settings (``RESET ALL``, ``DISCARD ALL``).
    """
    install_hook(conn, context_mode, pipeline_begin).active = True
    if isinstance(conn, AsyncConnection):
        conn.cursor_factory = derive_cursor_class(AsyncAuditCursor, conn.cursor_factory)
    elif isinstance(conn, Connection):
        conn.cursor_factory = derive_cursor_class(AuditCursor, conn.cursor_factory)
    else:
        raise TypeError(f"expected a psycopg connection, not {type(conn).__name__}")
    return conn
