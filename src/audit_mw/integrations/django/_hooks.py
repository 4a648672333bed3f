"""What the app installs: instrumented connections, the execute wrapper, the auth receivers.

Each connection Django opens (persistent, or checked out of its psycopg pool) is instrumented
with :func:`audit_mw.pool.instrument_connection` once Django has set its cursor factory: every
statement then carries the current audit context, in the same round trip, only when it
changed. The execute wrapper does no I/O: it resolves the request's user (``request.user``,
read lazily by the middleware) before the request's first statement.
"""

from __future__ import annotations

import threading
from contextlib import suppress
from typing import Any

from django.contrib.auth import get_user_model
from django.db import connections
from django.db.backends.base.base import BaseDatabaseWrapper
from psycopg import Connection
from psycopg_pool import ConnectionPool

from audit_mw.context import set_user
from audit_mw.errors import ConfigurationError
from audit_mw.events import log_auth_event
from audit_mw.integrations._apply import pending_user, resolve_pending_user
from audit_mw.integrations.django.settings import audit_settings
from audit_mw.pool import instrument_connection
from audit_mw.web._request import ANONYMOUS

__all__ = ["close_events_pool", "events_pool", "install_wrapper"]


def _resolve_user(execute: Any, sql: Any, params: Any, many: bool, context: Any) -> Any:
    resolve_pending_user()
    return execute(sql, params, many, context)


def install_wrapper(sender: Any, connection: BaseDatabaseWrapper, **_: Any) -> None:
    """``connection_created`` receiver: every statement of ``connection`` carries the context."""
    if connection.vendor != "postgresql":
        return
    driver = connection.connection
    if not isinstance(driver, Connection):
        raise ConfigurationError(
            "audit_mw's Django integration needs the psycopg 3 driver, not"
            f" {type(driver).__module__}")
    # After Django's get_new_connection(), which sets the cursor factory: the audit one is
    # derived from it (server-side binding or not).
    instrument_connection(driver)
    wrappers = connection.execute_wrappers
    if _resolve_user not in wrappers:
        # First, so that connection.execute_wrapper() blocks of the app pop their own.
        wrappers.insert(0, _resolve_user)


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
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.close()


def _bind(user_id: str) -> None:
    pending = pending_user()
    if pending is not None:
        pending.cancel()
    # Without a request context (a shell, a command) there is nothing to attribute.
    with suppress(ConfigurationError):
        set_user(user_id)


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
