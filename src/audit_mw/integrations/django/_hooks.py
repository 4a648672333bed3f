"""What the app installs: the execute wrapper and the auth-signal receivers."""

from __future__ import annotations

import threading
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import Connection
from psycopg_pool import ConnectionPool

from audit_mw.context import set_user
from audit_mw.errors import ConfigurationError
from audit_mw.events import log_auth_event
from audit_mw.integrations._apply import ensure_context, pending_user
from audit_mw.integrations.django.settings import audit_settings
from audit_mw.web._request import ANONYMOUS

__all__ = ["close_events_pool", "events_pool", "install_wrapper"]


def _carry_context(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
    connection = context["connection"].connection
    if isinstance(connection, Connection):
        ensure_context(connection)
    return execute(sql, params, many, context)


def install_wrapper(sender: Any, connection: BaseDatabaseWrapper, **_: Any) -> None:
    """``connection_created`` receiver: every statement of ``connection`` carries the context."""
    if connection.vendor != "postgresql":
        return
    wrappers = connection.execute_wrappers
    if _carry_context not in wrappers:
        # First, so that connection.execute_wrapper() blocks of the app pop their own.
        wrappers.insert(0, _carry_context)


_lock = threading.Lock()
_pool: ConnectionPool[Any] | None = None


def events_pool() -> ConnectionPool[Any]:
    """The auth events' own pool, opened on first use, on the ``EVENTS_DATABASE`` server.

    Its own connections, never the ORM's: an event survives the rollback of the request's
    transaction, and waiting for one never holds an ORM connection that another waits for.
    """
    global _pool  # noqa: PLW0603 - one pool per process, created lazily
    with _lock:
        if _pool is None:
            settings = audit_settings()
            params = connections[settings.events_database].get_connection_params()
            for key in ("context", "cursor_factory"):
                params.pop(key, None)
            params["autocommit"] = True
            _pool = ConnectionPool(kwargs=params, open=True, name="audit_mw-auth-events",
                                   **settings.events_pool)
        return _pool


def close_events_pool() -> None:
    """Close the auth events' pool (tests, shutdown); the next event opens a new one."""
    global _pool  # noqa: PLW0603
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def _bind(user_id: str) -> None:
    pending = pending_user()
    if pending is not None:
        pending.cancel()
    try:
        set_user(user_id)
    except ConfigurationError:
        pass  # no request context bound (a shell, a command): nothing to attribute


def logged_in(sender: Any, request: Any, user: Any, **_: Any) -> None:
    """``user_logged_in``: the rest of the request is the user's; a ``login`` event."""
    _bind(str(user.pk))
    if audit_settings().auth_events:
        log_auth_event(events_pool(), "login", user_id=str(user.pk))


def logged_out(sender: Any, request: Any, user: Any, **_: Any) -> None:
    """``user_logged_out``: a ``logout`` event; the rest of the request is anonymous."""
    if user is not None and audit_settings().auth_events:
        log_auth_event(events_pool(), "logout", user_id=str(user.pk))
    _bind(ANONYMOUS)


def login_failed(sender: Any, credentials: Any, request: Any = None, **_: Any) -> None:
    """``user_login_failed``: a ``login_failed`` event for the identifier tried."""
    if not audit_settings().auth_events:
        return
    field = get_user_model().USERNAME_FIELD
    tried = credentials.get(field) or credentials.get("username") or None
    log_auth_event(events_pool(), "login_failed", user_id=str(tried) if tried else None,
                   reason="bad_credentials")
