"""audit_mw: a compliance-grade, tamper-evident audit trail for Python web apps on PostgreSQL.

The names users need are re-exported here; the modules behind them are:

- :mod:`audit_mw.context`: the request's audit context (a ContextVar), ``audit_context``;
- :mod:`audit_mw.web`: the middleware that binds it per request, trusted-proxy client IPs;
- :mod:`audit_mw.pool`: ``AuditPool`` / ``AsyncAuditPool``, which carry the context to PostgreSQL;
- :mod:`audit_mw.events`: authentication, admin and data-access events (sync and async);
- :mod:`audit_mw.integrity`: the hash chain, its checkpoints, ``seal`` and ``verify``;
- :mod:`audit_mw.admin`: the admin routes (``admin_app``, imported on first use: it is the
  only part that needs Starlette);
- :mod:`audit_mw.capture`: install the schema, track tables, status;
- :mod:`audit_mw.errors`: the error tree.
"""

from typing import TYPE_CHECKING

from audit_mw.capture.schema import install
from audit_mw.capture.tracking import retrack, status, track, untrack
from audit_mw.context import (
    SETTING_NAMES,
    AuditContext,
    audit_context,
    bind,
    current,
    reset,
    set_user,
)
from audit_mw.errors import (
    AuditError,
    ConfigurationError,
    EventWriteError,
    IntegrityError,
    QueryError,
    SchemaError,
    TrackingError,
)
from audit_mw.events import (
    AccessAction,
    AdminAction,
    AuthAction,
    EventResult,
    EventSettings,
    alog_access,
    alog_auth_event,
    alog_event,
    configure_events,
    log_access,
    log_auth_event,
    log_event,
)
from audit_mw.integrity import (
    BackgroundSealer,
    Checkpoint,
    JsonlSink,
    KeyRing,
    SealResult,
    StructlogSink,
    VerifyResult,
    seal,
    verify,
    verify_entries,
)
from audit_mw.pool import AsyncAuditPool, AuditPool, apply_context, apply_context_async
from audit_mw.web.asgi import AuditMiddleware
from audit_mw.web.proxy import TrustedProxies, resolve_client_ip
from audit_mw.web.wsgi import WSGIAuditMiddleware

__all__ = [
    "SETTING_NAMES",
    "AccessAction",
    "AdminAction",
    "AsyncAuditPool",
    "AuditContext",
    "AuditError",
    "AuditMiddleware",
    "AuditPool",
    "AuthAction",
    "BackgroundSealer",
    "Checkpoint",
    "ConfigurationError",
    "EventResult",
    "EventSettings",
    "EventWriteError",
    "IntegrityError",
    "JsonlSink",
    "KeyRing",
    "QueryError",
    "SchemaError",
    "SealResult",
    "StructlogSink",
    "TrackingError",
    "TrustedProxies",
    "VerifyResult",
    "WSGIAuditMiddleware",
    "admin_app",
    "alog_access",
    "alog_auth_event",
    "alog_event",
    "apply_context",
    "apply_context_async",
    "audit_context",
    "bind",
    "configure_events",
    "current",
    "install",
    "log_access",
    "log_auth_event",
    "log_event",
    "reset",
    "resolve_client_ip",
    "retrack",
    "seal",
    "set_user",
    "status",
    "track",
    "untrack",
    "verify",
    "verify_entries",
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
