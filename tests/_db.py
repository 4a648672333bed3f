"""Small helpers shared by the database tests."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.rows import dict_row


def audit_rows(conn: psycopg.Connection[Any], table: str | None = None) -> list[dict[str, Any]]:
    """Every row-change event (optionally of one table), oldest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        if table is None:
            cur.execute("SELECT * FROM audit.events WHERE kind = 'data' ORDER BY id")
        else:
            cur.execute(
                "SELECT * FROM audit.events WHERE kind = 'data' AND table_name = %s ORDER BY id",
                [table],
            )
        return cur.fetchall()


def set_context(conn: psycopg.Connection[Any], **values: str) -> None:
    """Set audit.* settings for the session, as the pool does."""
    for name, value in values.items():
        conn.execute("SELECT set_config(%s, %s, false)", [f"audit.{name}", value])
