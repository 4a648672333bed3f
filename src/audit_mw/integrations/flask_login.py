"""Flask-Login: bind the user as soon as Flask-Login knows it, and record its auth events.

``init_audit(login_manager, app, events=pool)`` does three things:

- every time Flask-Login sets the request's user (loaded by your ``user_loader`` from the
  session or a cookie, ``login_user``, ``logout_user``), the audit context's user becomes
  ``user.get_id()``, or ``"anonymous"`` for an anonymous user. With
  :func:`audit_mw.integrations.sqlalchemy.instrument_engine` on the app's engine, the next
  statement carries it, even on the connection that just loaded the user;
- with ``load_user="before_request"`` (the default), the user is loaded at the start of each
  request, so a write made before the view touches ``current_user`` is attributed too;
- ``user_logged_in`` and ``user_logged_out`` become ``login`` and ``logout`` auth events,
  written through ``events`` (a small pool of its own: see ``docs/integrations.md``).
  Flask-Login has no signal for a failed login: call :func:`log_login_failed`.

The app must run inside ``WSGIAuditMiddleware`` (``app.wsgi_app = WSGIAuditMiddleware(...)``),
which binds the request's context; ``set_user`` refuses to run without one.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from flask import Flask, current_app, g
from flask_login import LoginManager, user_logged_in, user_logged_out
from flask_login.utils import _get_user
from psycopg_pool import ConnectionPool

from audit_mw.context import set_user
from audit_mw.errors import ConfigurationError
from audit_mw.events import EventResult, log_auth_event
from audit_mw.web._request import ANONYMOUS

__all__ = ["init_audit", "log_login_failed"]

_EXTENSION: Final = "audit_mw"


def _user_id(user: Any) -> str:
    if user is not None and getattr(user, "is_authenticated", False):
        return str(user.get_id())
    return ANONYMOUS


def init_audit(
    login_manager: LoginManager,
    app: Flask,
    *,
    events: ConnectionPool[Any] | None = None,
    load_user: Literal["before_request", "on_access"] = "before_request",
) -> None:
    """Attribute the app's writes to Flask-Login's user; record logins and logouts.

    ``events``: where auth events are written (own connection, own transaction, so that a
    rollback of the request's transaction cannot erase them); ``None`` records none.
    ``load_user="on_access"`` leaves the loading to the first use of ``current_user``.
    """
    if load_user not in ("before_request", "on_access"):
        raise ConfigurationError(
            f"load_user must be 'before_request' or 'on_access', not {load_user!r}")
    original = getattr(login_manager, "_update_request_context_with_user", None)
    if original is None:
        raise ConfigurationError(
            "this Flask-Login has no LoginManager._update_request_context_with_user, the hook "
            "audit_mw attributes writes through; it supports Flask-Login 0.6")

    def update_request_context_with_user(user: Any = None) -> None:
        original(user)
        set_user(_user_id(g._login_user))

    # The one place every way of setting the user goes through (loader, login, logout).
    login_manager._update_request_context_with_user = update_request_context_with_user
    app.extensions[_EXTENSION] = events
    if load_user == "before_request":
        app.before_request(_load_user)
    if events is not None:
        user_logged_in.connect(_logged_in, app)
        user_logged_out.connect(_logged_out, app)


def _load_user() -> None:
    _get_user()


def _events() -> ConnectionPool[Any] | None:
    pool: ConnectionPool[Any] | None = current_app.extensions.get(_EXTENSION)
    return pool


def _logged_in(sender: Flask, user: Any, **_: Any) -> None:
    pool = _events()
    if pool is not None:
        log_auth_event(pool, "login", user_id=_user_id(user))


def _logged_out(sender: Flask, user: Any, **_: Any) -> None:
    pool = _events()
    if pool is not None and user is not None:
        log_auth_event(pool, "logout", user_id=_user_id(user))


def log_login_failed(username: str, *, reason: str = "bad_credentials") -> EventResult:
    """Record a failed login for ``username`` on the events pool given to :func:`init_audit`.

    Written on its own connection: it is stored even when the request's transaction then
    rolls back.
    """
    pool = _events()
    if pool is None:
        raise ConfigurationError("log_login_failed() needs init_audit(..., events=pool)")
    return log_auth_event(pool, "login_failed", user_id=username, reason=reason)
