"""Recording accesses to the trail: every query, export and refusal is itself an event.

Reading the audit log is an audited action. Each successful query records who asked, with
which filters and how many rows came back; an export records its start (before any data
leaves) and its end (rows, digest); a refused request records an authorisation failure.
Events are written on their own connection and transaction, so nothing the request does
afterwards can roll them back. When a query's event cannot be written, the data is not
served: an unaudited read is exactly what the trail exists to prevent.

All writes go through :func:`record` (async) and :func:`record_sync`; the parameters are built
by the pure :func:`access_params`.
"""

from __future__ import annotations

import enum
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from audit_mw import _sql
from audit_mw.context import AuditContext

__all__ = ["AccessAction", "Actor", "access_params", "record", "record_sync"]

ANONYMOUS = "anonymous"


class AccessAction(enum.StrEnum):
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


def access_params(
    action: AccessAction,
    actor: Actor,
    *,
    success: bool,
    metadata: Mapping[str, Any],
    reason: str | None = None,
) -> dict[str, Any]:
    """The parameters of one access event (``record_access`` in ``sql/admin.sql``)."""
    return {
        "event_id": str(uuid.uuid4()),
        "action": str(action),
        "success": success,
        "reason": reason,
        "user_id": (actor.user_id or ANONYMOUS)[:256],
        "client_ip": actor.client_ip,
        "request_id": (actor.request_id or None) and actor.request_id[:128],
        "user_agent": (actor.user_agent or None) and actor.user_agent[:512],
        "metadata": json.dumps(dict(metadata), separators=(",", ":"), default=str),
    }


async def record(
    pool: AsyncConnectionPool[Any],
    action: AccessAction,
    actor: Actor,
    *,
    success: bool,
    metadata: Mapping[str, Any],
    reason: str | None = None,
) -> None:
    """Write one access event on its own connection; raises when it cannot be stored."""
    params = access_params(action, actor, success=success, metadata=metadata, reason=reason)
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(_sql.query("admin", "record_access"), params)


def record_sync(
    conn: psycopg.Connection[Any],
    action: AccessAction,
    actor: Actor,
    *,
    success: bool,
    metadata: Mapping[str, Any],
    reason: str | None = None,
) -> None:
    """Write one access event in a transaction of its own on ``conn`` (the CLI's shell)."""
    params = access_params(action, actor, success=success, metadata=metadata, reason=reason)
    with conn.transaction():
        conn.execute(_sql.query("admin", "record_access"), params)
