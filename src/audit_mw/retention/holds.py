"""Legal holds: data under a hold is never dropped by retention.

A hold covers a time range, one record (table and record id), or one user's actions,
optionally within a time range. Holds are never edited or deleted: releasing one records
who released it, when and why (``audit.legal_hold_releases``). Adding and releasing a hold
are themselves audited admin events (``legal_hold_added``, ``legal_hold_released``).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.errors import RetentionError
from audit_mw.events import log_event

__all__ = ["LegalHold", "add_hold", "list_holds", "release_hold"]

KINDS = ("time_range", "record", "user")


@dataclass(frozen=True, slots=True)
class LegalHold:
    """One legal hold; ``released_at`` is set once it was released."""

    id: int
    kind: str
    reason: str
    created_by: str
    created_at: dt.datetime
    schema_name: str | None = None
    table_name: str | None = None
    record_id: str | None = None
    app_user_id: str | None = None
    range_from: dt.datetime | None = None
    range_to: dt.datetime | None = None
    released_at: dt.datetime | None = None
    released_by: str | None = None
    release_reason: str | None = None

    @property
    def active(self) -> bool:
        return self.released_at is None

    def describe(self) -> str:
        """The hold in one line."""
        if self.kind == "record":
            table = f"{self.schema_name}.{self.table_name}" if self.schema_name \
                else str(self.table_name)
            what = f"record {table} {self.record_id}"
        elif self.kind == "user":
            what = f"user {self.app_user_id}"
        else:
            what = "time range"
        span = ""
        if self.range_from or self.range_to:
            span = (f" from {self.range_from.isoformat() if self.range_from else '-'}"
                    f" to {self.range_to.isoformat() if self.range_to else '-'}")
        return f"{what}{span}"


def add_hold(
    conn: psycopg.Connection[Any],
    *,
    reason: str,
    range_from: dt.datetime | None = None,
    range_to: dt.datetime | None = None,
    table: str | None = None,
    record_id: str | None = None,
    user_id: str | None = None,
    created_by: str | None = None,
) -> int:
    """Place a hold and return its id; recorded as a ``legal_hold_added`` admin event.

    Give ``table`` and ``record_id`` (``table`` may be ``schema.table``) for a record hold,
    ``user_id`` for a user hold, or only ``range_from`` (and ``range_to``) for a time-range
    hold. ``created_by`` defaults to the database role.
    """
    if not reason or not reason.strip():
        raise RetentionError("a legal hold needs a reason")
    if (table is None) != (record_id is None):
        raise RetentionError("a record hold needs both a table and a record id")
    if table is not None and user_id is not None:
        raise RetentionError("a hold covers a record or a user, not both")
    if range_from is not None and range_to is not None and range_to <= range_from:
        raise RetentionError("a hold's range must end after it starts")
    schema_name, table_name = None, None
    if table is not None:
        schema_name, _, table_name = table.rpartition(".")
        schema_name = schema_name or None
        kind = "record"
    elif user_id is not None:
        kind = "user"
    else:
        if range_from is None:
            raise RetentionError(
                "a time-range hold needs a start (or give a record or a user to hold)")
        kind = "time_range"
    with conn.transaction():
        row = conn.execute(_sql.query("retention", "add_hold"), {
            "kind": kind, "schema_name": schema_name, "table_name": table_name,
            "record_id": record_id, "app_user_id": user_id, "range_from": range_from,
            "range_to": range_to, "reason": reason, "created_by": created_by,
        }).fetchone()
        assert row is not None  # INSERT ... RETURNING returns the row  # noqa: S101
        hold_id = int(row[0])
        log_event(conn, "legal_hold_added", resource_type="legal_hold",
                  resource_id=hold_id, reason=reason, actor_id=created_by,
                  metadata={"kind": kind, "table": table, "record_id": record_id,
                            "user_id": user_id,
                            "from": range_from.isoformat() if range_from else None,
                            "to": range_to.isoformat() if range_to else None},
                  in_transaction=True)
    return hold_id


def release_hold(
    conn: psycopg.Connection[Any], hold_id: int, *, reason: str,
    released_by: str | None = None,
) -> None:
    """Release a hold (it stays on record); a ``legal_hold_released`` admin event."""
    if not reason or not reason.strip():
        raise RetentionError("releasing a legal hold needs a reason")
    with conn.transaction():
        row = conn.execute(_sql.query("retention", "release_hold"), {
            "hold_id": hold_id, "reason": reason, "released_by": released_by}).fetchone()
        if row is None:
            raise RetentionError(f"legal hold {hold_id} does not exist or is already released")
        log_event(conn, "legal_hold_released", resource_type="legal_hold",
                  resource_id=hold_id, reason=reason, actor_id=released_by,
                  in_transaction=True)


def list_holds(conn: psycopg.Connection[Any], *, include_released: bool = False
               ) -> list[LegalHold]:
    """The holds in force (and, with ``include_released``, the released ones), oldest first."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("retention", "holds"), {"all": include_released})
        return [LegalHold(**row) for row in cur.fetchall()]
