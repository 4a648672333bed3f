"""Audit-aware psycopg pools and cursors: every statement carries the current audit context.

:class:`AuditPool` (threads) and :class:`AsyncAuditPool` (asyncio) are ``psycopg_pool``
pools whose connections carry :func:`audit_mw.context.current` with their statements, in
the same round trip; :func:`instrument_connection` does the same for a connection you
manage yourself, and :func:`forget_context` says its settings are no longer known.
:func:`apply_context` and :func:`aapply_context` apply a context at once, in a round
trip of its own. See ``docs/pools.md``.
"""

from audit_mw.pool._base import ContextMode
from audit_mw.pool.async_ import (
    AsyncAuditClientCursor,
    AsyncAuditCursor,
    AsyncAuditPool,
    aapply_context,
)
from audit_mw.pool.instrument import forget_context, instrument_connection, suspend_context
from audit_mw.pool.sync import AuditClientCursor, AuditCursor, AuditPool, apply_context

__all__ = [
    "AsyncAuditClientCursor",
    "AsyncAuditCursor",
    "AsyncAuditPool",
    "AuditClientCursor",
    "AuditCursor",
    "AuditPool",
    "ContextMode",
    "aapply_context",
    "apply_context",
    "forget_context",
    "instrument_connection",
    "suspend_context",
]
