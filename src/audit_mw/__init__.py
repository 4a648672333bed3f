"""audit_mw: a compliance-grade, tamper-evident audit trail for Python web apps on PostgreSQL.

Here are the names an application is wired with; everything else lives in the package of
its part of the pipeline (see the README's "Architecture"):

- :mod:`audit_mw.context`: the request's audit context (a ContextVar): ``audit_context``,
  ``set_user``, and ``bind``/``reset``/``current`` for framework code;
- :mod:`audit_mw.web`: the ASGI and WSGI middleware that bind it per request, proxy trust;
- :mod:`audit_mw.pool`: ``AuditPool`` / ``AsyncAuditPool``, which carry it to PostgreSQL;
- :mod:`audit_mw.capture`: the database side: install the schema, track tables, status;
- :mod:`audit_mw.events`: authentication, admin and data-access events, redaction, spool;
- :mod:`audit_mw.integrity`: the hash chain, its checkpoints, ``seal`` and ``verify``;
- :mod:`audit_mw.retention`: the retention policy and legal holds;
- :mod:`audit_mw.admin`: the admin routes (``admin_app``, imported on first use: it is the
  only part that needs Starlette);
- :mod:`audit_mw.errors`: the error tree; :mod:`audit_mw.testing`: development helpers.
"""

from typing import TYPE_CHECKING

from audit_mw.context import AuditContext, audit_context, set_user
from audit_mw.errors import AuditError
from audit_mw.events import (
    AdminAction,
    AuthAction,
    EventSettings,
    alog_access,
    alog_auth_event,
    alog_event,
    configure_events,
    log_access,
    log_auth_event,
    log_event,
)
from audit_mw.pool import AsyncAuditPool, AuditPool
from audit_mw.web import AuditMiddleware, WSGIAuditMiddleware

__all__ = [
    "AdminAction",
    "AsyncAuditPool",
    "AuditContext",
    "AuditError",
    "AuditMiddleware",
    "AuditPool",
    "AuthAction",
    "EventSettings",
    "WSGIAuditMiddleware",
    "admin_app",
    "alog_access",
    "alog_auth_event",
    "alog_event",
    "audit_context",
    "configure_events",
    "log_access",
    "log_auth_event",
    "log_event",
    "set_user",
]

__version__ = "0.1.0"

if TYPE_CHECKING:
    from audit_mw.admin import admin_app


def __getattr__(name: str) -> object:
    # The admin routes are the only part that imports Starlette: load them on first use.
    if name == "admin_app":
        from audit_mw.admin import admin_app  # noqa: PLC0415

        return admin_app
    raise AttributeError(f"module 'audit_mw' has no attribute {name!r}")
