"""What the integrations share: a user resolved lazily, right before the first statement.

The statements themselves carry the context through :func:`audit_mw.pool.instrument_connection`
(same round trip, only when it changed). A framework that loads the user on demand (Django's
``request.user``) registers a resolver with :func:`defer_user` for the request; the
integration's statement hook calls :meth:`PendingUser.run` before a statement, which binds the
user with ``set_user`` once, so that the statement and every later one carry it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar, Token
from typing import Final

from audit_mw.context import set_user

__all__ = ["PendingUser", "defer_user", "pending_user", "resolve_pending_user", "undefer_user"]


class PendingUser:
    """A request's user, to be resolved once, before the request's first statement."""

    __slots__ = ("resolve",)

    def __init__(self, resolve: Callable[[], str | None]) -> None:
        self.resolve: Callable[[], str | None] | None = resolve

    def run(self) -> None:
        """Resolve the user and bind it with ``set_user``; only the first call does anything."""
        # Cleared before the call: resolving may run statements (a session load) that come
        # back here, and must not resolve again.
        resolve, self.resolve = self.resolve, None
        if resolve is None:
            return
        user_id = resolve()
        if user_id is not None:
            set_user(user_id)

    def cancel(self) -> None:
        """Forget the resolver: the user was bound by other means (a login, a logout)."""
        self.resolve = None


_PENDING: Final[ContextVar[PendingUser | None]] = ContextVar(
    "audit_mw.integrations.pending_user", default=None
)


def defer_user(resolve: Callable[[], str | None]) -> Token[PendingUser | None]:
    """Register ``resolve`` as the current request's user; undo with :func:`undefer_user`.

    Call it inside the request's audit context (the middleware's): every copy of the
    context made later (threads, tasks) shares the same pending user.
    """
    return _PENDING.set(PendingUser(resolve))


def undefer_user(token: Token[PendingUser | None]) -> None:
    """Undo :func:`defer_user` at the end of the request."""
    _PENDING.reset(token)


def pending_user() -> PendingUser | None:
    """The pending user of the current request, if any and not resolved yet."""
    pending = _PENDING.get()
    return pending if pending is not None and pending.resolve is not None else None


def resolve_pending_user() -> None:
    """Bind the current request's pending user, if there is one; cheap when there is none."""
    pending = _PENDING.get()
    if pending is not None and pending.resolve is not None:
        pending.run()
