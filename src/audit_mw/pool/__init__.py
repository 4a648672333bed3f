"""Audit-aware psycopg pools and cursors: every statement carries the current audit context.

:class:`AuditPool` (threads) and :class:`AsyncAuditPool` (asyncio) are ``psycopg_pool``
pools whose connections carry :func:`audit_mw.context.current` with their statements, in
the same round trip; :func:`instrument_connection` does the same for a connection you
manage yourself, and :func:`forget_context` says its settings are no longer known.
:func:`apply_context` and :func:`apply_context_async` apply a context at once, in a round
trip of its own. See ``docs/pools.md``.
"""

from audit_mw.pool._base import ContextMode
from audit_mw.pool.async_ import (
    AsyncAuditClientCursor,
    AsyncAuditCursor,
    AsyncAuditPool,
    apply_context_async,
)
from audit_mw.pool.instrument import forget_context, instrument_connection
from audit_mw.pool.sync import AuditClientCursor, AuditCursor, AuditPool, apply_context

__all__ = [
    "AsyncAuditClientCursor",
    "AsyncAuditCursor",
    "AsyncAuditPool",
    "AuditClientCursor",
    "AuditCursor",
    "AuditPool",
    "ContextMode",
    "apply_context",
    "apply_context_async",
    "forget_context",
    "instrument_connection",
]
