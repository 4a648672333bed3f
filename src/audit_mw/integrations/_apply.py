"""Carry the current audit context to a connection an ORM manages, before each statement.

ORMs keep their own pools and run statements on connections that audit_mw never checks
out, and they load the user through the same connection (a FastAPI dependency, Flask-Login's
``user_loader``, Django's database sessions), so the context must follow the user while the
connection is in use. The integrations call :func:`ensure_context` (or its async twin) with
the psycopg connection right before each statement; it compares the current context with
what the connection is known to carry and sends the settings only when they differ:

- outside a transaction, at session level, committed at once (in autocommit for that one
  statement, as the audit pools do): no later ROLLBACK can undo it or bring back the values
  it replaced, and the connection keeps it across checkouts of the ORM's pool, so the next
  request with the same context sends nothing;
- inside a transaction (the user became known after the transaction began), transaction
  local: it holds until the transaction ends, and a ROLLBACK takes nothing else with it.
  The session-level record is left as it was, and the next statement after the transaction
  ends compares with it again.

One extra round trip per change of context, none when it did not change. What the
connection carries is recorded per connection object (see ``audit_mw.pool._base``).

A *pending user* lets a framework defer loading the user until the first statement of the
request (Django's ``request.user``): :func:`defer_user` registers a resolver for the request
and :func:`ensure_context` runs it once, before comparing contexts.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any, Final
from weakref import WeakKeyDictionary

from psycopg import AsyncConnection, AsyncCursor, BaseConnection, Connection, Cursor, pq

from audit_mw.context import AuditContext, current, set_user
from audit_mw.pool import _base
from audit_mw.pool.async_ import _apply_session as _apply_session_async
from audit_mw.pool.sync import _apply_session

__all__ = ["PendingUser", "defer_user", "ensure_context", "ensure_context_async", "forget"]

_IDLE: Final = pq.TransactionStatus.IDLE
_INTRANS: Final = pq.TransactionStatus.INTRANS

# The context applied transaction-local in the connection's current transaction. Valid only
# while that transaction lasts: dropped whenever the connection is seen outside one.
_local: WeakKeyDictionary[BaseConnection[Any], AuditContext] = WeakKeyDictionary()


class PendingUser:
    """A request's user, to be resolved once, before the request's first statement."""

    __slots__ = ("resolve",)

    def __init__(self, resolve: Callable[[], str | None]) -> None:
        self.resolve: Callable[[], str | None] | None = resolve

    def run(self) -> None:
        """Resolve the user and bind it with ``set_user``; only the first call does anything."""
        resolve, self.resolve = self.resolve, None
        if resolve is None:
            return
        # Cleared before the call: resolving may run statements (a session load) that come
        # back here, and must not resolve again.
        user_id = resolve()
        if user_id is not None:
            set_user(user_id)

    def cancel(self) -> None:
        """Forget the resolver: the user was bound by other means (a login, a logout)."""
        self.resolve = None


_PENDING: Final[ContextVar[PendingUser | None]] = ContextVar(
    "audit_mw.integrations.pending_user", default=None
)


def defer_user(resolve: Callable[[], str | None]) -> PendingUser:
    """Register ``resolve`` to bind the user before the next statement of this context.

    Bind it inside the request's audit context (the middleware's); the returned object is
    shared by every copy of the context made later (threads, tasks).
    """
    pending = PendingUser(resolve)
    _PENDING.set(pending)
    return pending


def pending_user() -> PendingUser | None:
    """The pending user of the current request, if any and not resolved yet."""
    pending = _PENDING.get()
    return pending if pending is not None and pending.resolve is not None else None


def _needs_apply(conn: BaseConnection[Any], context: AuditContext) -> int | None:
    """``None`` when ``conn`` carries ``context``; else the transaction status to act on."""
    status = conn.pgconn.transaction_status
    if status == _IDLE:
        _local.pop(conn, None)
        return None if _base.is_applied(conn, context) else status
    if status == _INTRANS:
        local = _local.get(conn)
        if local is not None:
            return None if local == context else status
        return None if _base.is_applied(conn, context) else status
    # ACTIVE, INERROR, UNKNOWN: the statement runs in a pipeline or COPY of its own, fails,
    # or the connection is broken; sending anything now would fail or interleave.
    return None


def ensure_context(conn: Connection[Any]) -> AuditContext:
    """Make ``conn`` carry the current context before the statement about to run on it."""
    pending = _PENDING.get()
    if pending is not None and pending.resolve is not None:
        pending.run()
    context = current()
    status = _needs_apply(conn, context)
    if status == _IDLE:
        _apply_session(conn, context, prepare=None)
    elif status == _INTRANS:
        with Cursor(conn) as cur:
            cur.execute(_base.apply_statement(True), _base.setting_values(context),
                        prepare=False)
        _local[conn] = context
    return context


async def ensure_context_async(conn: AsyncConnection[Any]) -> AuditContext:
    """:func:`ensure_context` for an asyncio connection."""
    pending = _PENDING.get()
    if pending is not None and pending.resolve is not None:
        pending.run()
    context = current()
    status = _needs_apply(conn, context)
    if status == _IDLE:
        await _apply_session_async(conn, context, prepare=None)
    elif status == _INTRANS:
        async with AsyncCursor(conn) as cur:
            await cur.execute(_base.apply_statement(True), _base.setting_values(context),
                              prepare=False)
        _local[conn] = context
    return context


def forget(conn: BaseConnection[Any]) -> None:
    """Mark what ``conn`` carries as unknown: the next statement applies the context."""
    _base.forget(conn)
    _local.pop(conn, None)


def end_of_transaction(conn: BaseConnection[Any]) -> None:
    """Drop the transaction-local record of ``conn`` (its transaction ended)."""
    _local.pop(conn, None)
