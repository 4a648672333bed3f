"""Audit-aware psycopg pools: every checkout carries the current audit context.

:class:`AuditPool` (threads) and :class:`AsyncAuditPool` (asyncio) are
``psycopg_pool`` pools that apply :func:`audit_mw.context.current` to each connection they
hand out; :func:`apply_context` and :func:`apply_context_async` do the same for a
connection you manage yourself. See ``docs/pools.md``.
"""

from audit_mw.pool._base import ContextMode
from audit_mw.pool.async_ import AsyncAuditCursor, AsyncAuditPool, apply_context_async
from audit_mw.pool.sync import AuditCursor, AuditPool, apply_context

__all__ = [
    "AsyncAuditCursor",
    "AsyncAuditPool",
    "AuditCursor",
    "AuditPool",
    "ContextMode",
    "apply_context",
    "apply_context_async",
]
