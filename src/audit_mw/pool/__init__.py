"""Audit-aware psycopg pools: every checkout carries the current audit context.

:class:`AuditPool` (threads) and :class:`AsyncAuditPool` (asyncio) are
``psycopg_pool`` pools that apply :func:`audit_mw.context.current` to each connection they
hand out; :func:`apply_context` and :func:`aapply_context` do the same for a
connection you manage yourself. See ``docs/pools.md``.
"""

from audit_mw.pool._base import ContextMode
from audit_mw.pool.async_ import AsyncAuditCursor, AsyncAuditPool, aapply_context
from audit_mw.pool.sync import AuditCursor, AuditPool, apply_context

__all__ = [
    "AsyncAuditCursor",
    "AsyncAuditPool",
    "AuditCursor",
    "AuditPool",
    "ContextMode",
    "aapply_context",
    "apply_context",
]
