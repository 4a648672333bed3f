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


def track_before_0007(conn: psycopg.Connection[Any], table: str, *,
                      excluded: str = "", masked: str = "") -> None:
    """Track ``table`` (key column ``id``) as schema versions 1 to 6 did: UPDATE row-level.

    Stands for a table tracked before an upgrade; ``audit-mw status`` must tell it apart.
    ``excluded`` and ``masked`` are comma-separated plain column names.
    """
    args = f"'{{id}}', '{{{excluded}}}', '{{{masked}}}', 'public', '{table}'"
    conn.execute(f"""
        CREATE TRIGGER audit_mw_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows
            FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_insert({args});
        CREATE TRIGGER audit_mw_update AFTER UPDATE ON {table}
            FOR EACH ROW WHEN (OLD.* OPERATOR(pg_catalog.*<>) NEW.*)
            EXECUTE FUNCTION audit.capture_update({args});
        CREATE TRIGGER audit_mw_delete AFTER DELETE ON {table} REFERENCING OLD TABLE AS old_rows
            FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_delete({args});
        CREATE TRIGGER audit_mw_truncate AFTER TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_truncate({args});
        ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_insert;
        ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_update;
        ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_delete;
        ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_truncate;
        INSERT INTO audit.tracked_tables (schema_name, table_name, key_columns, excluded,
                                          masked, trigger_hash)
        VALUES ('public', '{table}', '{{id}}', '{{{excluded}}}', '{{{masked}}}',
                'tracked before schema version 7');
    """.encode())
