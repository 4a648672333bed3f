"""Verification against the database: recompute every entry, check every link and checkpoint.

:func:`verify` reads the chain, the events and the checkpoints in one read-only snapshot,
streams the chain in position order (memory does not grow with the trail) and feeds the
pure :class:`~audit_mw.integrity.chain.Verifier`. Given the checkpoint file (or any
copies kept outside the database), it also detects a truncated tail and a restored older
backup; without, a clean result is reported as *unanchored*. With ``record=True`` the
outcome is appended to ``audit.verification_runs`` (see :mod:`~audit_mw.integrity.runs`).
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import pq
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.errors import ConfigurationError, SchemaError, VerificationError
from audit_mw.integrity.chain import Finding, Verifier, VerifyResult
from audit_mw.integrity.checkpoints import Checkpoint, read_checkpoint_file
from audit_mw.integrity.keys import KeyRing
from audit_mw.integrity.retention import (
    Retained,
    RetentionCheckpoint,
    read_retention_file,
    retained_positions,
    retention_file_for,
)
from audit_mw.integrity.runs import record_failure, record_run
from audit_mw.integrity.seal import (
    _ORDER_START,
    _checkpoints,
    check_event_columns,
)

__all__ = ["ProgressCallback", "retention_from_row", "verify"]

#: Called with (entries checked so far, entries in the chain) every few thousand entries.
ProgressCallback = Callable[[int, int], None]

_STREAM_TYPES = ["int8", "int8", "bytea", "bytea", "bool", "text", "bytea"]


def verify(
    conn: psycopg.Connection[Any],
    keys: KeyRing | None = None,
    *,
    checkpoint_file: str | os.PathLike[str] | None = None,
    anchors: Sequence[Checkpoint] | None = None,
    start: Checkpoint | None = None,
    progress: ProgressCallback | None = None,
    retention_file: str | os.PathLike[str] | None = None,
    record: bool = False,
) -> VerifyResult:
    """Verify the chain in the database ``conn`` is connected to.

    ``keys`` defaults to :meth:`KeyRing.from_env` and must hold an HMAC key or an Ed25519
    public key; every checkpoint is checked with them. ``checkpoint_file`` (or ``anchors``)
    are checkpoint copies kept outside the database. ``start`` is a trusted checkpoint to
    begin after instead of the genesis. Partitions dropped by retention are known from the
    retention checkpoints in the database and in ``retention_file`` (default: the checkpoint
    file's ``.retention`` sibling): their events may be gone, every other entry is checked,
    and the result's ``retention_cut`` describes the drops. Raises
    :class:`~audit_mw.errors.VerificationError` or :class:`~audit_mw.errors.ConfigurationError`
    when verification cannot run; a broken chain is a result (``valid`` false), not an
    exception.

    ``record=True`` appends the result to ``audit.verification_runs`` afterwards (a run that
    raised ``VerificationError`` or ``SchemaError`` is recorded as ``unverifiable``); this needs
    a role that may insert there, the schema owner.
    """
    started_at = dt.datetime.now(dt.UTC)
    try:
        result = _verify(conn, keys, checkpoint_file=checkpoint_file, anchors=anchors,
                         start=start, progress=progress, retention_file=retention_file)
    except (VerificationError, SchemaError) as exc:
        if record:
            record_failure(conn, exc, started_at=started_at)
        raise
    if record:
        record_run(conn, result, started_at=started_at)
    return result


def _verify(
    conn: psycopg.Connection[Any],
    keys: KeyRing | None,
    *,
    checkpoint_file: str | os.PathLike[str] | None,
    anchors: Sequence[Checkpoint] | None,
    start: Checkpoint | None,
    progress: ProgressCallback | None,
    retention_file: str | os.PathLike[str] | None,
) -> VerifyResult:
    keys = KeyRing.from_env() if keys is None else keys
    if not keys.hmac_keys and not keys.public_keys:
        raise ConfigurationError(
            "no verification key: set AUDIT_HMAC_KEY (and AUDIT_HMAC_KEYS for older keys) "
            "or AUDIT_VERIFY_KEYS (Ed25519 public keys)")
    if checkpoint_file is not None:
        anchors = [*(anchors or ()), *read_checkpoint_file(checkpoint_file)]
        if retention_file is None:
            retention_file = retention_file_for(checkpoint_file)
    outside = read_retention_file(retention_file) if retention_file is not None else []
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise VerificationError("verify needs a connection that is not inside a transaction")
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("integrity", "read_only_snapshot"))
        cur.execute(_sql.query("integrity", "pin_session"))
        cur.execute(_sql.query("integrity", "stream_work_mem"))
        check_event_columns(conn)
        cur.execute(_sql.query("integrity", "chain_id"))
        ids = [str(r["chain_id"]) for r in cur.fetchall()]
        if len(ids) > 1:
            raise VerificationError(f"audit.chains holds {len(ids)} chains; expected one")
        chain_id = ids[0] if ids else None
        checkpoints = _checkpoints(cur, "checkpoints")
        cur.execute(_sql.query("integrity", "chain_head"))
        head = cur.fetchone()
        retained, cut_problem = retained_positions(
            [*_retention_checkpoints(cur), *outside], keys, chain_id)
        verifier = Verifier(chain_id=chain_id, checkpoints=checkpoints, keys=keys,
                            anchors=anchors, start=start,
                            retained=retained.ranges if retained else (),
                            retained_heads=retained.heads if retained else None)
        if cut_problem is not None:
            verifier.add(Finding("bad_checkpoint", cut_problem[0], None, cut_problem[1]))
        complete = _walk(conn, verifier, start, head["position"] if head else 0, progress)
        if verifier.mismatch is not None:
            _classify_mismatch(cur, verifier)
        start_order = _order_of(cur, start.position) if start else _ORDER_START
        head_order = (head["event_txid"], head["event_id"]) if head else _ORDER_START
        if head is not None:
            _find_inserted(cur, verifier, start_order, head_order, head["position"])
        cur.execute(_sql.query("integrity", "unsealed_count"),
                    {"txid": head_order[0], "id": head_order[1]})
        unsealed_row = cur.fetchone()
        unsealed = int(unsealed_row["unsealed"]) if unsealed_row else 0
        result = verifier.finish(unsealed=unsealed, complete=complete)
        if not result.valid and result.first_bad_id is None and result.first_bad_position:
            cur.execute(_sql.query("integrity", "event_at_position"),
                        {"position": result.first_bad_position})
            found = cur.fetchone()
            if found is not None:
                result = replace(result, first_bad_id=int(found["event_id"]))
    return _with_cut(result, retained, verifier.bridged)


def _with_cut(result: VerifyResult, retained: Retained | None, bridged: int) -> VerifyResult:
    if retained is None:
        return result
    summary = retained.summary(bridged)
    detail = result.detail
    if result.valid:
        detail += (f"; {bridged} entries of {summary['checkpoints']} partition(s) dropped by "
                   f"retention (policy {summary['latest']['policy']}) were linked over, "
                   "not recomputed")
    return replace(result, retention_cut=summary, detail=detail)


def _retention_checkpoints(cur: psycopg.Cursor[dict[str, Any]]) -> list[RetentionCheckpoint]:
    cur.execute(_sql.query("integrity", "retention_tables"))
    row = cur.fetchone()
    if not row or not row["present"]:
        return []
    cur.execute(_sql.query("integrity", "retention_checkpoints"))
    return [retention_from_row(r) for r in cur.fetchall()]


def retention_from_row(row: dict[str, Any]) -> RetentionCheckpoint:
    """A :class:`RetentionCheckpoint` from an ``audit.retention_checkpoints`` row."""
    return RetentionCheckpoint(
        seq=int(row["seq"]), chain_id=None if row["chain_id"] is None else str(row["chain_id"]),
        partition=str(row["partition_name"]), range_from=row["range_from"],
        range_to=str(row["range_to"]), row_count=int(row["row_count"]),
        positions=str(row["positions"]), position=int(row["position"]),
        head=bytes(row["head_hash"]),
        last_event_id=None if row["last_event_id"] is None else int(row["last_event_id"]),
        policy=str(row["policy"]), created_at=str(row["created_at"]),
        key_id=str(row["key_id"]), mac=bytes(row["mac"]), sig_key_id=row["sig_key_id"],
        signature=None if row["signature"] is None else bytes(row["signature"]),
    )


def _walk(
    conn: psycopg.Connection[Any],
    verifier: Verifier,
    start: Checkpoint | None,
    total: int,
    progress: ProgressCallback | None,
) -> bool:
    feed = verifier.feed_encoded
    query = _sql.query("integrity", "chain_entries").format(
        columns=_sql.query("integrity", "canonical_columns"),
        content=_sql.query("integrity", "content_bytes"))
    n = 0
    with conn.cursor() as cur, cur.copy(query, {"after": start.position if start else 0}) as copy:
        copy.set_types(_STREAM_TYPES)
        for position, event_id, stored_content, stored_entry, present, txid, content in (
                copy.rows()):
            if not feed(position, event_id, int(txid) if present else None,
                        content if present else None, stored_content, stored_entry):
                # A COPY cannot be left half-read; a cancel could hit the next statement of
                # this snapshot. Drain the rest as raw blocks, unparsed.
                for _ in copy:
                    pass
                return False
            n += 1
            if progress is not None and n % 10_000 == 0:
                progress(n, total)
    if progress is not None:
        progress(n, total)
    return True


def _classify_mismatch(cur: psycopg.Cursor[dict[str, Any]], verifier: Verifier) -> None:
    last = verifier.findings[-1]
    # Two rows with the sealed event's id: a copy was added (it may come first in the walk).
    if last.event_id is not None:
        cur.execute(_sql.query("integrity", "event_id_count"), {"id": last.event_id})
        copies = cur.fetchone()
        if copies is not None and int(copies["n"]) > 1:
            verifier.reclassify(
                "duplicate", f"event {last.event_id} at position {last.position} is there "
                f"{copies['n']} times (a duplicate was added)")
            return
    # Content that was sealed at another position: the entry moved, it was not rewritten.
    cur.execute(_sql.query("integrity", "chain_position_of_content"),
                {"hash": verifier.mismatch})
    found = cur.fetchone()
    if found is not None and found["position"] != last.position:
        verifier.reclassify(
            "reordered", f"event {last.event_id} at position {last.position} was sealed at "
            f"position {found['position']}")


def _order_of(cur: psycopg.Cursor[dict[str, Any]], position: int) -> tuple[str, int]:
    cur.execute(_sql.query("integrity", "order_at_position"), {"position": position})
    row = cur.fetchone()
    if row is None:
        raise VerificationError(f"the start checkpoint's position {position} is not in the chain")
    return str(row["t"]), int(row["i"])


def _find_inserted(
    cur: psycopg.Cursor[dict[str, Any]],
    verifier: Verifier,
    start_order: tuple[str, int],
    head_order: tuple[str, int],
    head_position: int,
) -> None:
    cur.execute(_sql.query("integrity", "inserted_events"), {
        "txid": head_order[0], "id": head_order[1],
        "start_txid": start_order[0], "start_id": start_order[1]})
    row = cur.fetchone()
    if row is not None:
        position = row["before_position"] or head_position + 1
        verifier.add(Finding(
            "inserted", int(position), int(row["id"]),
            f"event {row['id']} lies among sealed events (before position {position}) but "
            "was never sealed"))
