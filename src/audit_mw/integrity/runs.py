"""Recorded verification runs: what the last verification found, kept in the database.

``audit-mw verify --record`` (or :func:`audit_mw.integrity.verify` with ``record=True``)
appends one row to ``audit.verification_runs`` per run; the admin routes' ``/verify``
reads the newest one. The table is append-only (the same guards as the trail), so a
result cannot be rewritten after the fact; inserting needs the schema owner's role.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import psycopg
from psycopg import pq

from audit_mw import _sql
from audit_mw.errors import ConfigurationError, SchemaError
from audit_mw.integrity.chain import VerifyResult

__all__ = ["record_failure", "record_run", "run_to_json"]

#: The columns of a run as the admin routes serve it (``run_to_json``), in table order.
RUN_FIELDS = ("id", "started_at", "finished_at", "status", "anchored", "checked", "unsealed",
              "checkpoints", "head_position", "anchored_position", "chain_id", "kind",
              "first_bad_id", "first_bad_position", "detail", "db_role")


def record_run(
    conn: psycopg.Connection[Any],
    result: VerifyResult,
    *,
    started_at: dt.datetime,
    status: str | None = None,
) -> int:
    """Append ``result`` to ``audit.verification_runs`` in a transaction of its own; its id.

    ``status`` overrides ``result.status`` (a run that could not complete is recorded as
    ``unverifiable``). Raises :class:`~audit_mw.errors.ConfigurationError` when the role may
    not insert there, :class:`~audit_mw.errors.SchemaError` when the table is missing.
    """
    params = {
        "started_at": started_at, "status": status or result.status,
        "anchored": result.anchored, "checked": result.checked, "unsealed": result.unsealed,
        "checkpoints": result.checkpoints, "head_position": result.head_position,
        "anchored_position": result.anchored_position, "chain_id": result.chain_id,
        "kind": result.kind, "first_bad_id": result.first_bad_id,
        "first_bad_position": result.first_bad_position, "detail": result.detail,
    }
    try:
        with conn.transaction():
            row = conn.execute(_sql.query("integrity", "insert_verification_run"),
                               params).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise ConfigurationError(
            "recording a verification run needs INSERT on audit.verification_runs: run the "
            "verifier as the schema owner (GRANT audit_owner TO the verifier's login)") from None
    except psycopg.errors.UndefinedTable:
        raise SchemaError("audit.verification_runs does not exist: upgrade the schema with "
                          "`audit-mw install`") from None
    if row is None:  # INSERT ... RETURNING always returns the row; be loud if not
        raise SchemaError("recording the verification run returned no id")
    return int(row[0])


def record_failure(
    conn: psycopg.Connection[Any], error: Exception, *, started_at: dt.datetime
) -> int | None:
    """Record a verification that could not run (``error``) as ``unverifiable``.

    Returns ``None`` when ``conn`` is still inside a transaction (nothing can be written).
    """
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        return None
    failed = VerifyResult(
        valid=False, anchored=False, kind=None, first_bad_id=None, first_bad_position=None,
        detail=f"verification could not run: {error}", checked=0, unsealed=0, checkpoints=0,
        head_position=0, chain_id=None)
    return record_run(conn, failed, started_at=started_at, status="unverifiable")


def run_to_json(names: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
    """A ``verification_runs`` row as JSON-ready values (timestamps ISO 8601, ids as text)."""
    run = dict(zip(names, row, strict=True))
    for key in ("started_at", "finished_at"):
        if isinstance(run.get(key), dt.datetime):
            run[key] = run[key].astimezone(dt.UTC).isoformat()
    if run.get("chain_id") is not None:
        run["chain_id"] = str(run["chain_id"])
    run["valid"] = run.get("status") in ("valid", "valid_unanchored")
    return run
