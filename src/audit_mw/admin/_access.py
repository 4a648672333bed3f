"""Recording accesses to the trail: every query, export and refusal is itself an event.

Reading the audit log is an audited action. Each successful query records who asked, with
which filters and how many rows came back; an export records its start (before any data
leaves) and its end (rows, digest); a refused request records an authorisation failure.
Events are written on their own connection and transaction, so nothing the request does
afterwards can roll them back. When a query's event cannot be written, the data is not
served: an unaudited read is exactly what the trail exists to prevent.

All writes go through :func:`arecord` (async) and :func:`record`, which use the
application-event writers of :mod:`audit_mw.events` (``audit.log_event()``, its redaction
and its failure policy: fail closed by default, or a durable spool when configured).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from audit_mw.context import AuditContext
from audit_mw.events import alog_event, log_event

__all__ = ["Actor", "TrailAccessAction", "arecord", "record"]

ANONYMOUS = "anonymous"
#: ``resource_type`` of every access event: what was accessed is the trail itself.
RESOURCE_TYPE = "audit_trail"


class TrailAccessAction(enum.StrEnum):
    """The actions recorded for accesses to the trail (kind ``admin``)."""

    QUERIED = "audit_queried"
    EXPORT_STARTED = "audit_export_started"
    EXPORTED = "audit_exported"
    DENIED = "audit_access_denied"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who made the request, as far as the admin routes can tell."""

    user_id: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    user_agent: str | None = None

    @classmethod
    def from_context(cls, context: AuditContext, **fallback: str | None) -> Actor:
        """The bound audit context, completed from ``fallback`` where it is empty."""
        return cls(
            user_id=context.user_id or fallback.get("user_id"),
            client_ip=context.client_ip or fallback.get("client_ip"),
            request_id=context.request_id or fallback.get("request_id"),
            user_agent=context.user_agent or fallback.get("user_agent"),
        )


def _request_facts(actor: Actor) -> dict[str, str]:
    """The actor as a minimal WSGI environ: what the event writer reads a request from.

    The writer prefers the bound audit context (the middleware's), so this only counts
    where no context is bound: behind the WSGI adapter's loop, or in the CLI.
    """
    environ = {"REQUEST_METHOD": "GET"}
    if actor.client_ip:
        environ["REMOTE_ADDR"] = actor.client_ip
    if actor.user_agent:
        environ["HTTP_USER_AGENT"] = actor.user_agent
    if actor.request_id:
        environ["HTTP_X_REQUEST_ID"] = actor.request_id
    return environ


def _event(action: TrailAccessAction, actor: Actor, *, success: bool,
           metadata: Mapping[str, Any], reason: str | None) -> dict[str, Any]:
    """The arguments of ``log_event``/``alog_event`` for one access: the one core of both
    writers below, which only differ in how they wait for the database."""
    return {"action": str(action), "resource_type": RESOURCE_TYPE, "success": success,
            "reason": reason, "actor_id": (actor.user_id or ANONYMOUS)[:256],
            "request": _request_facts(actor), "metadata": metadata}


async def arecord(
    pool: AsyncConnectionPool[Any],
    action: TrailAccessAction,
    actor: Actor,
    *,
    success: bool,
    metadata: Mapping[str, Any],
    reason: str | None = None,
) -> None:
    """Write one access event on its own connection (fail closed: raises when it cannot)."""
    await alog_event(pool, **_event(action, actor, success=success, metadata=metadata,
                                    reason=reason))


def record(
    conn: psycopg.Connection[Any],
    action: TrailAccessAction,
    actor: Actor,
    *,
    success: bool,
    metadata: Mapping[str, Any],
    reason: str | None = None,
) -> None:
    """Write one access event on ``conn``, committed on its own (the CLI's shell)."""
    log_event(conn, **_event(action, actor, success=success, metadata=metadata, reason=reason))
