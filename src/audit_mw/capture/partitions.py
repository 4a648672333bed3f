"""The monthly partitions of ``audit.events``: creating them ahead of need, listing them.

``audit.events`` is partitioned by ``occurred_at``: one partition per UTC month
(``audit.events_pYYYYMM``) and a default partition that catches anything outside them, so a
business write never fails for lack of a partition. :func:`ensure_partitions` creates the
months ahead (``audit-mw install``, ``audit-mw seal`` and ``audit-mw partitions ensure`` call
it); a month whose rows already sit in the default partition is reported, not created (see
``docs/scaling.md``). Runs as the schema owner (or a superuser): the SQL functions are not
executable by anyone else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from audit_mw import _sql

__all__ = [
    "EnsureResult",
    "PartitionInfo",
    "create_partition",
    "ensure_partitions",
    "ensure_partitions_quietly",
    "list_partitions",
    "partition_guard_problems",
]

_LOG = structlog.get_logger("audit_mw.partitions")

#: Months created ahead of the current one by default.
MONTHS_AHEAD = 3


@dataclass(frozen=True, slots=True)
class EnsureResult:
    """What :func:`ensure_partitions` did: partitions created, months it could not create."""

    created: tuple[str, ...]
    rows_in_default: tuple[str, ...] = ()
    overlapping: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    """One partition of ``audit.events`` (bounds are ``None`` for the default partition)."""

    name: str
    range_from: dt.datetime | None
    range_to: dt.datetime | None
    is_default: bool
    estimated_rows: int
    total_bytes: int


def ensure_partitions(
    conn: psycopg.Connection[Any], months_ahead: int = MONTHS_AHEAD,
    *, now: dt.datetime | None = None,
) -> EnsureResult:
    """Create the monthly partitions from the month of ``now`` to ``months_ahead`` after.

    Cheap when they exist. Commits unless ``conn`` is inside a transaction the caller owns.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("retention", "ensure_partitions"),
                    {"months_ahead": months_ahead, "now": now})
        rows = cur.fetchall()
    by_outcome: dict[str, list[str]] = {"created": [], "rows_in_default": [], "overlaps": []}
    for row in rows:
        by_outcome[str(row["outcome"])].append(str(row["partition_name"]))
    return EnsureResult(tuple(by_outcome["created"]), tuple(by_outcome["rows_in_default"]),
                        tuple(by_outcome["overlaps"]))


def ensure_partitions_quietly(conn: psycopg.Connection[Any]) -> EnsureResult | None:
    """:func:`ensure_partitions` for jobs that run often (``audit-mw seal``): a role that may
    not create partitions gets a structured warning instead of a failure."""
    try:
        result = ensure_partitions(conn)
    except psycopg.errors.InsufficientPrivilege:
        _LOG.warning("audit_partitions_not_ensured",
                     reason="this role may not run audit.ensure_partitions()")
        return None
    if result.rows_in_default:
        _LOG.warning("audit_partitions_rows_in_default", months=list(result.rows_in_default))
    return result


def create_partition(
    conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime
) -> str:
    """Create the partition for ``[start, end)`` (for example a month of imported history)."""
    with conn.transaction():
        row = conn.execute(_sql.query("retention", "create_partition"),
                           {"start": start, "end": end}).fetchone()
    assert row is not None  # a SELECT of a function returns one row  # noqa: S101
    return str(row[0])


def list_partitions(conn: psycopg.Connection[Any]) -> list[PartitionInfo]:
    """Every partition of ``audit.events``, oldest first, the default partition last."""
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        # The bounds are read as timestamps, which psycopg parses only in an ISO DateStyle.
        cur.execute(_sql.query("integrity", "pin_session"))
        cur.execute(_sql.query("retention", "partitions"))
        return [PartitionInfo(str(r["partition_name"]), r["range_from"], r["range_to"],
                              bool(r["is_default"]), int(r["estimated_rows"]),
                              int(r["total_bytes"])) for r in cur.fetchall()]


def partition_guard_problems(cur: psycopg.Cursor[Any]) -> list[str]:
    """Partitions whose append-only guards are missing or not ENABLE ALWAYS, as sentences."""
    cur.execute(_sql.query("retention", "partition_guards"))
    problems = []
    for row in cur.fetchall():
        name, guard, enabled = (row["partition_name"], row["guard"], row["enabled"]) \
            if isinstance(row, dict) else row
        state = {None: "missing", "D": "disabled", "R": "only in replica mode",
                 "O": "only in origin mode"}.get(enabled, "in an unknown state")
        problems.append(f"append-only guard {guard} on partition audit.{name} is {state}")
    return problems
