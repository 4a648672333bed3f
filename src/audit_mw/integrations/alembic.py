"""Alembic: track, untrack and retrack tables from a migration.

.. code-block:: python

    from alembic import op
    import audit_mw.integrations.alembic as audit_op

    def upgrade() -> None:
        op.create_table("invoices", ...)
        audit_op.track("invoices", exclude=["card_token"])

The helpers run on the migration's own connection (``op.get_bind()``), inside its
transaction: the table and its capture triggers are committed together, or not at all.
The migration role needs a few grants, given once by the administrator who installed the
schema: :func:`grant_migration_role` (see ``docs/integration-alembic.md``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import psycopg
from alembic import op
from psycopg import sql

from audit_mw import _sql
from audit_mw.capture import tracking
from audit_mw.capture.tracking import TrackedTable
from audit_mw.errors import ConfigurationError

__all__ = ["grant_migration_role", "retrack", "track", "untrack"]


def _connection() -> psycopg.Connection[Any]:
    driver = op.get_bind().connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise ConfigurationError(
            "audit_mw's Alembic operations need the psycopg 3 driver (postgresql+psycopg://),"
            f" not {type(driver).__module__}")
    return driver


def track(table: str, *, exclude: Iterable[str] = (), mask: Iterable[str] = (),
          allow_no_primary_key: bool = False) -> TrackedTable:
    """:func:`audit_mw.capture.track` on the migration's connection, in its transaction."""
    return tracking.track(_connection(), table, exclude=exclude, mask=mask,
                          allow_no_primary_key=allow_no_primary_key)


def untrack(table: str) -> None:
    """:func:`audit_mw.capture.untrack` on the migration's connection, in its transaction."""
    tracking.untrack(_connection(), table)


def retrack(*tables: str) -> tuple[TrackedTable, ...]:
    """:func:`audit_mw.capture.retrack` of ``tables`` (default: every tracked table)."""
    return tracking.retrack(_connection(), tables)


def grant_migration_role(conn: psycopg.Connection[Any], role: str, *,
                         untrack: bool = False) -> None:
    """Let ``role`` track its own tables from migrations; run once, by the administrator.

    Grants what ``track`` and ``retrack`` need (and ``untrack`` with ``untrack=True``),
    and nothing on the trail itself: the role does not own the audit schema and can neither
    read nor change ``audit.events``. Commits.
    """
    names = ["grant_migration_role", *(["grant_migration_untrack"] if untrack else [])]
    with conn.transaction():
        for name in names:
            conn.execute(_sql.query("integrations", name).format(role=sql.Identifier(role)))
