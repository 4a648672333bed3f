"""Application events: authentication, admin actions and access to sensitive data.

Row changes are captured by triggers; logins, failed attempts, admin actions and reads are
not row changes, so the application records them with one call::

    from audit_mw.events import log_auth_event

    def login(request, pool):
        user = authenticate(form["username"], form["password"])
        if user is None:
            log_auth_event(pool, "login_failed", user_id=form["username"],
                           reason="bad_password", request=request)
            raise Unauthorized()
        log_auth_event(pool, "login", user_id=user.id, request=request)

Each function has an async twin with an ``a`` prefix (:func:`alog_auth_event`, ...) taking
an ``AsyncConnectionPool`` or ``AsyncConnection``.

- Events go to ``audit.events`` through ``audit.log_event()``: database time, a
  client-generated event id that makes retries and replays idempotent, the ``data`` kind
  refused (only triggers write it).
- By default an event is written on its own connection (a pool checkout) and in its own
  transaction, so a rollback of the request's transaction cannot erase it. A connection
  is accepted when no transaction is open on it; one inside a transaction is refused
  unless ``in_transaction=True``, which makes the event part of that transaction (atomic
  with a business change, and rolled back with it).
- When the database cannot be reached, the call raises
  :class:`~audit_mw.errors.EventWriteError` (fail closed), unless the
  :class:`EventSettings` name a spool: then the event is kept on disk and replayed later.
- Everything is cleaned of control characters and redacted (:mod:`audit_mw.events.redaction`)
  before it is stored, spooled or logged, and each event is emitted through structlog
  (:mod:`audit_mw.events.log`).

See ``docs/events.md`` for the vocabulary, the failure policies and the redaction rules.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from audit_mw.errors import ConfigurationError
from audit_mw.events import _async, _sync
from audit_mw.events._async import AsyncDatabase
from audit_mw.events._core import (
    OWASP_EVENTS,
    AccessAction,
    AdminAction,
    AuthAction,
    EventRecord,
    EventResult,
    EventSettings,
    Kind,
    build_record,
    configure_events,
    default_success,
    event_settings,
)
from audit_mw.events._outcome import ReplayResult
from audit_mw.events._sync import Database
from audit_mw.events.spool import Spool

__all__ = [
    "OWASP_EVENTS",
    "AccessAction",
    "AdminAction",
    "AsyncDatabase",
    "AuthAction",
    "Database",
    "EventResult",
    "EventSettings",
    "Kind",
    "ReplayResult",
    "alog_access",
    "alog_auth_event",
    "alog_event",
    "areplay",
    "configure_events",
    "event_settings",
    "log_access",
    "log_auth_event",
    "log_event",
    "replay",
]

_AUTH_ACTIONS = frozenset(a.value for a in AuthAction)


def _auth_record(
    *,
    action: AuthAction | str,
    user_id: str | int | None,
    actor_id: str | None,
    success: bool | None,
    reason: str | None,
    request: object,
    metadata: Mapping[str, object] | None,
    event_id: uuid.UUID | str | None,
    settings: EventSettings,
) -> EventRecord:
    name = str(action.value if isinstance(action, AuthAction) else action)
    if name not in _AUTH_ACTIONS:
        raise ValueError(
            f"{name!r} is not an auth action; use one of {sorted(_AUTH_ACTIONS)}, or"
            " log_event() for anything else"
        )
    return build_record(
        kind=Kind.AUTH, action=name,
        success=default_success(name) if success is None else success,
        reason=reason, actor_id=actor_id, subject_id=user_id, resource_type=None,
        resource_id=None, metadata=metadata, request=request,
        redactor=settings.redactor, event_id=event_id,
    )


def _other_record(
    *,
    kind: Kind | str,
    action: str,
    resource_type: str | None,
    resource_id: str | int | None,
    actor_id: str | None,
    success: bool,
    reason: str | None,
    request: object,
    metadata: Mapping[str, object] | None,
    event_id: uuid.UUID | str | None,
    settings: EventSettings,
) -> EventRecord:
    if Kind(kind) is Kind.AUTH:
        raise ConfigurationError("use log_auth_event() for auth events")
    return build_record(
        kind=kind, action=str(action), success=success, reason=reason, actor_id=actor_id,
        subject_id=None, resource_type=resource_type, resource_id=resource_id,
        metadata=metadata, request=request, redactor=settings.redactor, event_id=event_id,
    )


def _access_metadata(
    fields: list[str] | tuple[str, ...] | None,
    record_count: int | None,
    metadata: Mapping[str, object] | None,
) -> dict[str, object] | None:
    combined: dict[str, object] = dict(metadata or {})
    if fields is not None:
        combined["fields"] = list(fields)
    if record_count is not None:
        combined["record_count"] = record_count
    return combined or None


# --- synchronous ------------------------------------------------------------------------


def log_auth_event(
    db: Database,
    action: AuthAction | str,
    *,
    user_id: str | int | None = None,
    actor_id: str | None = None,
    success: bool | None = None,
    reason: str | None = None,
    request: object = None,
    metadata: Mapping[str, object] | None = None,
    in_transaction: bool = False,
    event_id: uuid.UUID | str | None = None,
    settings: EventSettings | None = None,
) -> EventResult:
    """Record an authentication event (see :class:`AuthAction` for the vocabulary).

    ``user_id`` is the account the event is about: the user who logged in, or, for a
    failure, the identifier that was tried (cleaned, redacted, capped at 256 characters);
    it is stored as ``resource_type='user'``, ``resource_id=user_id``. The acting user
    (``app_user_id``) is ``actor_id``, else the bound context's user, else the account
    itself for a success; a failure is never attributed to the account it tried.
    ``success`` defaults to false for ``login_failed``, ``mfa_failed`` and
    ``password_change_failed``, true otherwise; ``reason`` says why it failed.

    IP, user agent and request id come from the bound context (the middleware's), else
    from ``request`` (a Starlette request, an ASGI scope, a WSGI environ, a Flask request).

    Returns an :class:`EventResult`; raises :class:`~audit_mw.errors.EventWriteError` when
    the event can be neither stored nor spooled.
    """
    settings = settings or event_settings()
    record = _auth_record(
        action=action, user_id=user_id, actor_id=actor_id, success=success, reason=reason,
        request=request, metadata=metadata, event_id=event_id, settings=settings,
    )
    return _sync.write(db, record, in_transaction=in_transaction, settings=settings)


def log_event(
    db: Database,
    action: AdminAction | str,
    *,
    resource_type: str | None = None,
    resource_id: str | int | None = None,
    success: bool = True,
    reason: str | None = None,
    actor_id: str | None = None,
    request: object = None,
    metadata: Mapping[str, object] | None = None,
    kind: Kind | str = Kind.ADMIN,
    in_transaction: bool = False,
    event_id: uuid.UUID | str | None = None,
    settings: EventSettings | None = None,
) -> EventResult:
    """Record an admin action (privilege changes, user management, configuration changes).

    ``action`` is any name of 1-64 characters ``a-z 0-9 _ . : -`` starting with a letter
    (:class:`AdminAction` has the usual ones); ``resource_type`` and ``resource_id`` say
    what it was done to; ``metadata`` holds structured details (redacted). ``kind`` may be
    ``admin`` (default) or ``access``. Other arguments as in :func:`log_auth_event`.
    """
    settings = settings or event_settings()
    record = _other_record(
        kind=kind, action=action, resource_type=resource_type, resource_id=resource_id,
        actor_id=actor_id, success=success, reason=reason, request=request,
        metadata=metadata, event_id=event_id, settings=settings,
    )
    return _sync.write(db, record, in_transaction=in_transaction, settings=settings)


def log_access(
    db: Database,
    resource_type: str,
    resource_id: str | int | None = None,
    *,
    action: AccessAction | str = AccessAction.READ,
    fields: list[str] | tuple[str, ...] | None = None,
    record_count: int | None = None,
    reason: str | None = None,
    success: bool = True,
    actor_id: str | None = None,
    request: object = None,
    metadata: Mapping[str, object] | None = None,
    in_transaction: bool = False,
    event_id: uuid.UUID | str | None = None,
    settings: EventSettings | None = None,
) -> EventResult:
    """Record access to sensitive data (kind ``access``): triggers cannot see reads.

    PCI DSS 10.2.1.1 asks for every individual access to cardholder data to be logged.
    ``fields`` names what was read (never the values), ``record_count`` how many records,
    ``reason`` the purpose. Other arguments as in :func:`log_event`.
    """
    return log_event(
        db, action, resource_type=resource_type, resource_id=resource_id, success=success,
        reason=reason, actor_id=actor_id, request=request,
        metadata=_access_metadata(fields, record_count, metadata), kind=Kind.ACCESS,
        in_transaction=in_transaction, event_id=event_id, settings=settings,
    )


def replay(
    db: Database,
    spool: Spool | str | None = None,
    *,
    wait: bool = True,
    settings: EventSettings | None = None,
) -> ReplayResult:
    """Store every event in the spool (that of ``settings`` unless ``spool`` is given).

    Idempotent: events already stored are counted as duplicates and not stored again.
    With ``wait=False`` it returns at once (``skipped``) when another replay is running.
    """
    settings = settings or event_settings()
    return _sync.replay(db, _spool(spool, settings), settings=settings, wait=wait)


# --- asynchronous ----------------------------------------------------------------------


async def alog_auth_event(
    db: AsyncDatabase,
    action: AuthAction | str,
    *,
    user_id: str | int | None = None,
    actor_id: str | None = None,
    success: bool | None = None,
    reason: str | None = None,
    request: object = None,
    metadata: Mapping[str, object] | None = None,
    in_transaction: bool = False,
    event_id: uuid.UUID | str | None = None,
    settings: EventSettings | None = None,
) -> EventResult:
    """The async form of :func:`log_auth_event`."""
    settings = settings or event_settings()
    record = _auth_record(
        action=action, user_id=user_id, actor_id=actor_id, success=success, reason=reason,
        request=request, metadata=metadata, event_id=event_id, settings=settings,
    )
    return await _async.write(db, record, in_transaction=in_transaction, settings=settings)


async def alog_event(
    db: AsyncDatabase,
    action: AdminAction | str,
    *,
    resource_type: str | None = None,
    resource_id: str | int | None = None,
    success: bool = True,
    reason: str | None = None,
    actor_id: str | None = None,
    request: object = None,
    metadata: Mapping[str, object] | None = None,
    kind: Kind | str = Kind.ADMIN,
    in_transaction: bool = False,
    event_id: uuid.UUID | str | None = None,
    settings: EventSettings | None = None,
) -> EventResult:
    """The async form of :func:`log_event`."""
    settings = settings or event_settings()
    record = _other_record(
        kind=kind, action=action, resource_type=resource_type, resource_id=resource_id,
        actor_id=actor_id, success=success, reason=reason, request=request,
        metadata=metadata, event_id=event_id, settings=settings,
    )
    return await _async.write(db, record, in_transaction=in_transaction, settings=settings)


async def alog_access(
    db: AsyncDatabase,
    resource_type: str,
    resource_id: str | int | None = None,
    *,
    action: AccessAction | str = AccessAction.READ,
    fields: list[str] | tuple[str, ...] | None = None,
    record_count: int | None = None,
    reason: str | None = None,
    success: bool = True,
    actor_id: str | None = None,
    request: object = None,
    metadata: Mapping[str, object] | None = None,
    in_transaction: bool = False,
    event_id: uuid.UUID | str | None = None,
    settings: EventSettings | None = None,
) -> EventResult:
    """The async form of :func:`log_access`."""
    return await alog_event(
        db, action, resource_type=resource_type, resource_id=resource_id, success=success,
        reason=reason, actor_id=actor_id, request=request,
        metadata=_access_metadata(fields, record_count, metadata), kind=Kind.ACCESS,
        in_transaction=in_transaction, event_id=event_id, settings=settings,
    )


async def areplay(
    db: AsyncDatabase,
    spool: Spool | str | None = None,
    *,
    wait: bool = True,
    settings: EventSettings | None = None,
) -> ReplayResult:
    """The async form of :func:`replay`."""
    settings = settings or event_settings()
    return await _async.replay(db, _spool(spool, settings), settings=settings, wait=wait)


def _spool(spool: Spool | str | None, settings: EventSettings) -> Spool:
    if isinstance(spool, Spool):
        return spool
    if spool is not None:
        return Spool(spool)
    if settings.spool is None:
        raise ConfigurationError("no spool to replay: pass one, or configure EventSettings(spool=)")
    return settings.spool
