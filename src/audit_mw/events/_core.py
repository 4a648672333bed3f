"""The pure core of the application-event writers: vocabulary, settings, building a record.

No I/O here. :func:`build_record` turns what the application says (an action, the user, a
request object, metadata) into the exact parameters of ``audit.log_event()``: validated,
cleaned of control characters, redacted, capped to the same limits the database applies,
so that what is stored, what is spooled and what is logged are the same values. The sync
and async shells (``events._sync``, ``events._async``) only move records to the database, the
spool and the log.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv6Address, ip_address
from pathlib import Path
from typing import Any, Final

from audit_mw.context import current, is_valid_request_id
from audit_mw.errors import ConfigurationError
from audit_mw.events.redaction import DEFAULT_REDACTOR, JSONValue, Redactor, clean_text
from audit_mw.events.spool import Spool
from audit_mw.web._request import ANONYMOUS

__all__ = [
    "AccessAction",
    "AdminAction",
    "AuthAction",
    "EventRecord",
    "EventResult",
    "EventSettings",
    "Kind",
    "build_record",
    "configure_events",
    "event_settings",
]


class Kind(enum.StrEnum):
    """The kinds of application event (``data`` is reserved for the capture triggers)."""

    AUTH = "auth"
    ADMIN = "admin"
    ACCESS = "access"


class AuthAction(enum.StrEnum):
    """The authentication vocabulary; see ``docs/events.md`` for the OWASP equivalents."""

    LOGIN = "login"
    LOGIN_FAILED = "login_failed"
    LOGOUT = "logout"
    ACCOUNT_CREATED = "account_created"
    ACCOUNT_LOCKED = "account_locked"
    ACCOUNT_UNLOCKED = "account_unlocked"
    ACCOUNT_DELETED = "account_deleted"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105 - an action name, not a secret
    PASSWORD_CHANGE_FAILED = "password_change_failed"  # noqa: S105 - an action name, not a secret
    PASSWORD_RESET_REQUESTED = "password_reset_requested"  # noqa: S105 - an action name, not a secret
    PASSWORD_RESET = "password_reset"  # noqa: S105 - an action name, not a secret
    MFA_ENROLLED = "mfa_enrolled"
    MFA_REMOVED = "mfa_removed"
    MFA_FAILED = "mfa_failed"
    ROLE_GRANTED = "role_granted"
    ROLE_REVOKED = "role_revoked"
    TOKEN_CREATED = "token_created"  # noqa: S105 - an action name, not a secret
    TOKEN_REVOKED = "token_revoked"  # noqa: S105 - an action name, not a secret
    SESSION_EXPIRED = "session_expired"


class AdminAction(enum.StrEnum):
    """Suggested names for admin actions; any well-formed action name is accepted."""

    PRIVILEGE_ESCALATION = "privilege_escalation"
    USER_CREATED = "user_created"
    USER_UPDATED = "user_updated"
    USER_DELETED = "user_deleted"
    CONFIG_CHANGED = "config_changed"
    AUDIT_QUERIED = "audit_queried"
    AUDIT_EXPORTED = "audit_exported"
    RETENTION_APPLIED = "retention_applied"


class AccessAction(enum.StrEnum):
    """Ways sensitive data is accessed (PCI DSS 10.2.1.1: triggers cannot see reads)."""

    READ = "read"
    SEARCH = "search"
    EXPORT = "export"
    DOWNLOAD = "download"
    PRINT = "print"


#: The nearest OWASP Logging Vocabulary event of each auth action, for SIEM rules.
OWASP_EVENTS: Final[Mapping[str, str]] = {
    "login": "authn_login_success",
    "login_failed": "authn_login_fail",
    "logout": "session_expired",
    "account_created": "user_created",
    "account_locked": "authn_login_lock",
    "account_unlocked": "user_updated",
    "account_deleted": "user_deleted",
    "password_changed": "authn_password_change",
    "password_change_failed": "authn_password_change_fail",
    "password_reset_requested": "authn_password_change",
    "password_reset": "authn_password_change",
    "mfa_enrolled": "authn_token_created",
    "mfa_removed": "authn_token_delete",
    "mfa_failed": "authn_login_fail",
    "role_granted": "authz_change",
    "role_revoked": "authz_change",
    "token_created": "authn_token_created",
    "token_revoked": "authn_token_revoked",
    "session_expired": "session_expired",
    "privilege_escalation": "authz_admin",
    "user_created": "user_created",
    "user_updated": "user_updated",
    "user_deleted": "user_deleted",
    "config_changed": "authz_admin",
    "read": "sensitive_read",
    "search": "sensitive_read",
    "export": "sensitive_read",
    "download": "sensitive_read",
    "print": "sensitive_read",
}

# Auth actions that record a failure unless told otherwise.
_FAILURES: Final = frozenset({"login_failed", "password_change_failed", "mfa_failed"})

_ACTION_RE: Final = re.compile(r"[a-z][a-z0-9_.:-]{0,63}")

# The caps of audit.log_event(), applied here first so that the log says what is stored.
USER_ID_MAX: Final = 256
REQUEST_ID_MAX: Final = 128
USER_AGENT_MAX: Final = 512
REASON_MAX: Final = 512
RESOURCE_TYPE_MAX: Final = 64
RESOURCE_ID_MAX: Final = 256
METADATA_MAX: Final = 16384
EXTRA_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class EventSettings:
    """How events are written; set once with :func:`configure_events` or pass per call.

    - ``spool``: ``None`` (the default) fails closed: when an event cannot be stored, the
      call raises :class:`~audit_mw.errors.EventWriteError`. A :class:`~audit_mw.events.spool.Spool`
      (or a path) keeps such events in a durable local file instead, replayed on the next
      successful write and by ``audit-mw replay``.
    - ``redactor``: the redaction rules (:data:`~audit_mw.events.redaction.DEFAULT_REDACTOR`).
    - ``timeout``: seconds to wait for a connection from a pool.
    - ``logger``: the structlog logger name events are emitted under.
    """

    spool: Spool | None = None
    redactor: Redactor = DEFAULT_REDACTOR
    timeout: float = 5.0
    logger: str = "audit_mw.events"

    def __init__(
        self,
        *,
        spool: Spool | str | Path | None = None,
        redactor: Redactor = DEFAULT_REDACTOR,
        timeout: float = 5.0,
        logger: str = "audit_mw.events",
    ) -> None:
        if not isinstance(redactor, Redactor):
            raise ConfigurationError("redactor must be an audit_mw.events.redaction.Redactor")
        if not (isinstance(timeout, int | float) and timeout > 0):
            raise ConfigurationError(f"timeout must be a positive number, not {timeout!r}")
        object.__setattr__(
            self, "spool", Spool(spool) if isinstance(spool, str | Path) else spool)
        object.__setattr__(self, "redactor", redactor)
        object.__setattr__(self, "timeout", float(timeout))
        object.__setattr__(self, "logger", logger)


_settings: EventSettings = EventSettings()


def configure_events(settings: EventSettings) -> EventSettings:
    """Set the process-wide :class:`EventSettings`; return the previous ones."""
    global _settings  # one process-wide default, like structlog.configure
    if not isinstance(settings, EventSettings):
        raise ConfigurationError("configure_events() takes an EventSettings")
    previous, _settings = _settings, settings
    return previous


def event_settings() -> EventSettings:
    """The process-wide :class:`EventSettings`."""
    return _settings


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One event, ready to store: ``params`` are the arguments of ``audit.log_event()``."""

    params: dict[str, Any]

    @property
    def event_id(self) -> str:
        return str(self.params["event_id"])

    def log_fields(self) -> dict[str, Any]:
        """The fields of the structured log record (same names as the stored columns)."""
        fields = {k: v for k, v in self.params.items() if v is not None}
        for name in ("metadata", "context_extra"):
            if name in fields:
                fields[name] = json.loads(fields[name])
        owasp = OWASP_EVENTS.get(self.params["action"])
        if owasp is not None:
            fields["owasp_event"] = owasp
        return fields

    def to_json(self) -> str:
        """One line of JSON (the spool format); never contains a raw newline."""
        return json.dumps(self.params, separators=(",", ":"), ensure_ascii=True,
                          sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> EventRecord:
        """Parse a spooled record; raise ValueError when it is not one."""
        params = json.loads(line)
        if not isinstance(params, dict) or set(params) != _PARAM_NAMES:
            raise ValueError("not an audit_mw event record")
        uuid.UUID(str(params["event_id"]))
        # Cleaned again: a line spooled by an older version, or edited, may hold what no
        # database accepts (a lone surrogate, a NUL), and must not make a replay raise.
        return cls({k: clean_text(v) if isinstance(v, str) else v for k, v in params.items()})


@dataclass(frozen=True, slots=True)
class EventResult:
    """What happened to an event.

    ``stored``: it is in ``audit.events`` (``id`` and ``occurred_at``, database time, say
    where and when; ``created`` is false when an earlier write with the same event id had
    stored it already). ``spooled``: the database could not be reached and the event is in
    the durable spool, to be replayed.
    """

    event_id: uuid.UUID
    stored: bool
    spooled: bool = False
    id: int | None = None
    occurred_at: datetime | None = None
    created: bool = False


_PARAM_NAMES: Final = frozenset({
    "event_id", "kind", "action", "success", "reason", "app_user_id", "client_ip",
    "request_id", "user_agent", "context_extra", "resource_type", "resource_id", "metadata",
})


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What an event takes from a request object."""

    client_ip: str | None = None
    user_agent: str | None = None
    request_id: str | None = None


def _normalise_ip(value: object) -> str | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        address = ip_address(value)
    except ValueError:
        return None
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            return None
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def _valid_request_id(value: object) -> str | None:
    return value if isinstance(value, str) and is_valid_request_id(value) else None


def request_facts(request: object) -> RequestFacts:
    """The client IP, user agent and request id of a request object.

    Accepts a Starlette ``Request``/``WebSocket`` or anything with an ASGI ``scope``, an
    ASGI scope, a WSGI environ, or a Flask/Werkzeug request (anything with ``environ``).
    The IP is the socket peer: forwarding headers are not read here, because only the
    middleware knows which proxies to trust (its context takes precedence, see
    :func:`build_record`).
    """
    scope = getattr(request, "scope", None)
    if isinstance(scope, Mapping):
        return _from_scope(scope)
    environ = getattr(request, "environ", None)
    if isinstance(environ, Mapping):
        return _from_environ(environ)
    if isinstance(request, Mapping):
        if request.get("type") in ("http", "websocket"):
            return _from_scope(request)
        if "REQUEST_METHOD" in request or "wsgi.version" in request:
            return _from_environ(request)
    raise ConfigurationError(
        f"request must be a Starlette request, an ASGI scope, a WSGI environ or a Flask"
        f" request, not {type(request).__name__}"
    )


def _from_scope(scope: Mapping[str, Any]) -> RequestFacts:
    user_agent = request_id = None
    for name, value in scope.get("headers") or ():
        if name == b"user-agent" and user_agent is None:
            user_agent = value.decode("latin-1")
        elif name == b"x-request-id" and request_id is None:
            request_id = value.decode("latin-1")
    client = scope.get("client")
    return RequestFacts(
        client_ip=_normalise_ip(client[0]) if client else None,
        user_agent=user_agent or None,
        request_id=_valid_request_id(request_id),
    )


def _from_environ(environ: Mapping[str, Any]) -> RequestFacts:
    return RequestFacts(
        client_ip=_normalise_ip(environ.get("REMOTE_ADDR")),
        user_agent=environ.get("HTTP_USER_AGENT") or None,
        request_id=_valid_request_id(environ.get("HTTP_X_REQUEST_ID")),
    )


def _cap(value: str | None, limit: int) -> str | None:
    if value is None:
        return None
    value = value[:limit]
    return value or None


def _check_action(action: str) -> str:
    action = str(action) if isinstance(action, enum.Enum) else action
    if not isinstance(action, str) or not _ACTION_RE.fullmatch(action):
        raise ValueError(
            f"action {action!r} is not 1-64 characters of a-z 0-9 _ . : - starting with a"
            " letter"
        )
    return action


def _as_text(name: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, str | int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"{name} must be a str, an int or None, not {type(value).__name__}")


def _metadata_json(redactor: Redactor, metadata: Mapping[str, object] | None) -> str | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata must be a mapping, not {type(metadata).__name__}")
    cleaned: dict[str, JSONValue] = redactor.metadata(metadata)
    text = json.dumps(cleaned, separators=(",", ":"), ensure_ascii=False, sort_keys=True)
    if len(text) > METADATA_MAX:
        # Cut here, visibly, rather than have the database drop it: the log and the trail
        # must say the same thing.
        text = json.dumps({"[truncated]": len(text)}, separators=(",", ":"))
    return text


def build_record(
    *,
    kind: Kind | str,
    action: str,
    success: bool | None,
    reason: str | None,
    actor_id: str | None,
    subject_id: str | int | None,
    resource_type: str | None,
    resource_id: str | int | None,
    metadata: Mapping[str, object] | None,
    request: object,
    redactor: Redactor,
    event_id: uuid.UUID | str | None,
) -> EventRecord:
    """Validate, clean, redact and cap one event into the parameters of ``audit.log_event()``.

    Who, from where, under which request id: explicit arguments first, then the bound
    :func:`~audit_mw.context.current` context (the middleware's, which resolved the IP
    behind trusted proxies), then the ``request`` object. The acting user (stored in
    ``app_user_id``) is ``actor_id`` if given, else the context's user unless it is
    anonymous, else, for a successful event about ``subject_id``, that subject (the user
    who just logged in), else the context's user (``anonymous`` or ``None``). A failure
    is never attributed to the account it tried to use.
    """
    kind = Kind(kind)
    action = _check_action(action)
    if success is not None and not isinstance(success, bool):
        raise TypeError(f"success must be a bool or None, not {type(success).__name__}")
    if event_id is None:
        event_id = uuid.uuid4()
    elif not isinstance(event_id, uuid.UUID):
        event_id = uuid.UUID(str(event_id))

    context = current()
    facts = request_facts(request) if request is not None else RequestFacts()
    text = redactor.optional_text
    subject = _cap(text(_as_text("user_id", subject_id)), USER_ID_MAX)
    actor = _cap(text(_as_text("actor_id", actor_id)), USER_ID_MAX)
    if actor is None:
        bound = context.user_id
        if bound is not None and bound != ANONYMOUS:
            actor = bound
        elif success is not False and subject is not None:
            actor = subject
        else:
            actor = bound
    extra = context.extra
    extra_json = None
    if extra:
        extra_clean = redactor.metadata(extra)
        extra_json = json.dumps(extra_clean, separators=(",", ":"), ensure_ascii=False,
                                sort_keys=True)
        if len(extra_json) > EXTRA_MAX:
            extra_json = None

    params: dict[str, Any] = {
        "event_id": str(event_id),
        "kind": kind.value,
        "action": action,
        "success": success,
        "reason": _cap(text(reason), REASON_MAX),
        "app_user_id": _cap(text(actor), USER_ID_MAX),
        "client_ip": context.client_ip or facts.client_ip,
        "request_id": context.request_id or facts.request_id,
        "user_agent": _cap(text(context.user_agent or facts.user_agent), USER_AGENT_MAX),
        "context_extra": extra_json,
        "resource_type": _cap(text(resource_type), RESOURCE_TYPE_MAX),
        "resource_id": _cap(text(_as_text("resource_id", resource_id)), RESOURCE_ID_MAX),
        "metadata": _metadata_json(redactor, metadata),
    }
    if subject is not None and params["resource_id"] is None:
        params["resource_type"] = params["resource_type"] or "user"
        params["resource_id"] = subject
    return EventRecord(params)


def default_success(action: str) -> bool:
    """Whether an auth action records a success when the caller does not say."""
    return action not in _FAILURES
