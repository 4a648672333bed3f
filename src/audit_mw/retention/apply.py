"""Applying a retention policy: drop whole partitions that expired, are sealed and unheld.

:func:`plan_retention` decides, partition by partition, without changing anything (a dry
run). :func:`apply_retention` then, for each partition to drop, oldest first:

1. (once) verifies the chain, and drops nothing if it does not verify: a retention
   checkpoint must never bless a tampered range;
2. optionally archives the partition: to the Parquet archive (``archive``, a folder or any
   fsspec URL; see :mod:`audit_mw.archive`), where it is written, read back and verified
   against the chain before anything is dropped, and/or as a verifiable export
   (``archive_dir``);
3. in one transaction, under the sealer's lock: records an authenticated retention checkpoint
   (range, row count, the chain positions of its events, the last of them and the entry hash
   there), records a ``retention_applied`` admin event, and calls ``audit.drop_partition``,
   which re-checks in the database that every row is sealed, no legal hold covers the
   partition and the checkpoint's count is right, then drops it;
4. copies the checkpoint to the sinks (the retention file beside the checkpoint file).

A partition is dropped only if its upper bound is at or before ``now - policy``; the default
partition is never dropped. A policy shorter than 12 months is refused unless forced.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.capture.partitions import list_partitions
from audit_mw.errors import RetentionError, VerificationError
from audit_mw.events import log_event
from audit_mw.integrity.chain import GENESIS
from audit_mw.integrity.checkpoints import utc_text
from audit_mw.integrity.keys import KeyRing
from audit_mw.integrity.retention import RetentionCheckpoint
from audit_mw.integrity.verify import verify
from audit_mw.retention.policy import MIN_MONTHS, RetentionPolicy

__all__ = [
    "PartitionDecision",
    "RetentionResult",
    "RetentionSinkLike",
    "apply_retention",
    "plan_retention",
]


class RetentionSinkLike(Protocol):
    """Where retention checkpoints are copied after their drop is committed."""

    def write(self, checkpoints: Sequence[RetentionCheckpoint]) -> None: ...


@dataclass(frozen=True, slots=True)
class PartitionDecision:
    """What retention does with one partition, and why."""

    partition: str
    range_from: dt.datetime | None
    range_to: dt.datetime | None
    drop: bool
    reason: str
    rows: int | None = None
    holds: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """The plan (dry run) or the outcome of applying a policy."""

    policy: RetentionPolicy
    now: dt.datetime
    cutoff: dt.datetime
    dry_run: bool
    decisions: tuple[PartitionDecision, ...]
    dropped: tuple[str, ...] = ()
    checkpoints: tuple[RetentionCheckpoint, ...] = ()
    archives: tuple[Path, ...] = field(default=())
    archived: tuple[Any, ...] = field(default=())

    @property
    def to_drop(self) -> tuple[PartitionDecision, ...]:
        return tuple(d for d in self.decisions if d.drop)


def _check_policy(policy: RetentionPolicy, now: dt.datetime, force: bool) -> None:
    if policy.shorter_than_minimum(now) and not force:
        raise RetentionError(
            f"retention policy {policy.name!r} keeps less than {MIN_MONTHS} months; "
            "refusing without force (audit-mw retention apply --force)")


def _now(now: dt.datetime | None) -> dt.datetime:
    moment = now or dt.datetime.now(dt.UTC)
    if moment.tzinfo is None:
        raise RetentionError("now must be timezone-aware")
    return moment


def plan_retention(
    conn: psycopg.Connection[Any], policy: RetentionPolicy, *,
    now: dt.datetime | None = None, force: bool = False,
) -> RetentionResult:
    """Decide what ``policy`` would drop at ``now``; changes nothing.

    Expired partitions are counted exactly (a scan of each); partitions within the policy
    are only listed.
    """
    moment = _now(now)
    _check_policy(policy, moment, force)
    cutoff = policy.cutoff(moment)
    decisions = []
    for part in list_partitions(conn):
        if part.is_default:
            decisions.append(PartitionDecision(part.name, None, None, False,
                                               "the default partition is never dropped"))
            continue
        if part.range_to is None or part.range_to > cutoff:
            decisions.append(PartitionDecision(part.name, part.range_from, part.range_to, False,
                                               "within the policy"))
            continue
        decisions.append(_expired_decision(conn, part.name, part.range_from, part.range_to))
    return RetentionResult(policy, moment, cutoff, True, tuple(decisions))


def _stats(cur: psycopg.Cursor[dict[str, Any]], name: str) -> dict[str, Any]:
    cur.execute(_sql.query("retention", "partition_stats").format(
        partition=sql.Identifier("audit", name)))
    row = cur.fetchone()
    assert row is not None  # an aggregate returns one row  # noqa: S101
    return row


def _expired_decision(
    conn: psycopg.Connection[Any], name: str, start: dt.datetime | None, end: dt.datetime
) -> PartitionDecision:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        stats = _stats(cur, name)
        cur.execute(_sql.query("retention", "partition_holds"), {"partition": f"audit.{name}"})
        holds = tuple(int(r["hold_id"]) for r in cur.fetchall())
    rows, unsealed = int(stats["row_count"]), int(stats["unsealed"])
    if unsealed:
        return PartitionDecision(name, start, end, False,
                                 f"expired, but {unsealed} events are not sealed yet", rows)
    if holds:
        return PartitionDecision(
            name, start, end, False,
            f"expired, but under legal hold {', '.join(str(h) for h in holds)}", rows, holds)
    return PartitionDecision(name, start, end, True, "expired, sealed, not held", rows)


def apply_retention(
    conn: psycopg.Connection[Any],
    policy: RetentionPolicy,
    keys: KeyRing | None = None,
    *,
    now: dt.datetime | None = None,
    dry_run: bool = False,
    force: bool = False,
    sinks: Sequence[RetentionSinkLike] = (),
    archive_dir: str | Path | None = None,
    archive: str | None = None,
    archive_options: Mapping[str, Any] | None = None,
    checkpoint_file: str | Path | None = None,
    verify_first: bool = True,
    actor: str | None = None,
) -> RetentionResult:
    """Apply ``policy`` at ``now`` (default: the current time); see the module docstring.

    ``keys`` (default :meth:`KeyRing.from_env`) must hold the HMAC key the checkpoints are
    authenticated with. ``conn`` must not be inside a transaction. ``checkpoint_file`` is
    passed to the verification that runs first. ``archive`` (a folder or fsspec URL, with
    ``archive_options`` for its filesystem) archives each partition to Parquet first; a
    partition whose archive does not verify is not dropped. Raises
    :class:`~audit_mw.errors.RetentionError` when the policy is refused or the chain does not
    verify (nothing is dropped then).
    """
    plan = plan_retention(conn, policy, now=now, force=force)
    if dry_run or not plan.to_drop:
        return plan
    keys = KeyRing.from_env() if keys is None else keys
    keys.require_sealing_key()
    if verify_first:
        checked = verify(conn, keys, checkpoint_file=checkpoint_file)
        if not checked.valid:
            raise RetentionError(
                f"the chain does not verify ({checked.kind} at position "
                f"{checked.first_bad_position}: {checked.detail}); retention drops nothing")
    folder = Path(archive_dir) if archive_dir is not None else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    dropped: list[str] = []
    issued: list[RetentionCheckpoint] = []
    archives: list[Path] = []
    archived: list[Any] = []
    for decision in plan.to_drop:
        written = None
        if archive is not None:
            month = _parquet(conn, decision, archive, keys, archive_options)
            archived.append(month)
            written = (month.count, month.positions, month.url)
        export = None
        if folder is not None:
            export = _archive(conn, decision, folder, keys)
            archives.append(export)
        cp = _drop_one(conn, decision, policy=policy, keys=keys, archive=export,
                       parquet=written, actor=actor)
        dropped.append(decision.partition)
        issued.append(cp)
        for sink in sinks:
            try:
                sink.write([cp])
            except OSError as exc:
                raise VerificationError(
                    f"partition {decision.partition} was dropped and retention checkpoint "
                    f"{cp.seq} is committed, but it could not be written to its sink ({exc}); "
                    "copy it from audit.retention_checkpoints") from exc
    return RetentionResult(policy, plan.now, plan.cutoff, False, plan.decisions,
                           tuple(dropped), tuple(issued), tuple(archives), tuple(archived))


def _parquet(conn: psycopg.Connection[Any], decision: PartitionDecision, url: str,
             keys: KeyRing, options: Mapping[str, Any] | None) -> Any:
    # Imported here: the archive's dependencies are an extra (audit-mw[archive]).
    from audit_mw.archive.write import archive_partition  # noqa: PLC0415
    from audit_mw.errors import ArchiveError  # noqa: PLC0415

    try:
        month = archive_partition(conn, decision.partition, url, keys,
                                  storage_options=options)
    except ArchiveError as exc:
        raise RetentionError(f"partition {decision.partition} was not dropped: {exc}") from exc
    if month.count != decision.rows:
        raise RetentionError(
            f"the archive of {decision.partition} holds {month.count} events, the partition "
            f"{decision.rows}; nothing dropped")
    return month


def _archive(
    conn: psycopg.Connection[Any], decision: PartitionDecision, folder: Path, keys: KeyRing
) -> Path:
    # Imported here: the export writer belongs to the admin package.
    from audit_mw.admin.export import ExportKey, write_export  # noqa: PLC0415
    from audit_mw.admin.query import ExportRange  # noqa: PLC0415

    kid, secret = keys.require_sealing_key()
    if decision.range_from is None or decision.range_to is None:
        raise RetentionError(f"partition {decision.partition} has an open range; "
                             "it cannot be archived by date")
    path = folder / f"{decision.partition}.ndjson"
    if path.exists():
        raise RetentionError(f"archive {path} exists already; refusing to overwrite it")
    with path.open("xb") as out:
        stats = write_export(conn, ExportRange(decision.range_from, decision.range_to),
                             ExportKey(kid, secret), out)
    if stats.count != decision.rows:
        raise RetentionError(
            f"the archive of {decision.partition} holds {stats.count} events, the partition "
            f"{decision.rows}; nothing dropped")
    return path


def _drop_one(
    conn: psycopg.Connection[Any], decision: PartitionDecision, *, policy: RetentionPolicy,
    keys: KeyRing, archive: Path | None, parquet: tuple[int, str, str] | None,
    actor: str | None,
) -> RetentionCheckpoint:
    name = decision.partition
    assert decision.range_to is not None  # expired partitions have an upper bound  # noqa: S101
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("integrity", "pin_session"))
        # No seal runs between reading the chain here and the drop.
        cur.execute(_sql.query("retention", "seal_lock"))
        stats = _stats(cur, name)
        rows = int(stats["row_count"])
        if int(stats["unsealed"]):
            raise RetentionError(f"partition {name} holds unsealed events; nothing dropped")
        if archive is not None and rows != decision.rows:
            raise RetentionError(f"partition {name} changed after it was archived; "
                                 "nothing dropped")
        if parquet is not None and (parquet[0], parquet[1]) != (rows, str(stats["positions"])):
            # The archive verified against the chain; it must hold exactly these entries.
            raise RetentionError(f"partition {name} differs from its archive ({parquet[0]} "
                                 f"events at {parquet[1]}); nothing dropped")
        last = int(stats["last_position"] or 0)
        cur.execute(_sql.query("retention", "chain_at"), {"position": last})
        at = cur.fetchone()
        chain_id = str(at["chain_id"]) if at else None
        if last > 0 and (at is None or at["position"] is None):
            raise RetentionError(f"chain position {last} is missing; run `audit-mw verify`")
        head = bytes(at["entry_hash"]) if at and at["entry_hash"] is not None else GENESIS
        last_event_id = int(at["event_id"]) if at and at["event_id"] is not None else None
        cur.execute(_sql.query("retention", "next_retention_seq"))
        seq_row = cur.fetchone()
        if seq_row is None:  # an aggregate: never
            raise RetentionError("could not number the retention checkpoint; nothing dropped")
        cp = RetentionCheckpoint(
            seq=int(seq_row["seq"]), chain_id=chain_id, partition=name,
            range_from=None if decision.range_from is None else utc_text(decision.range_from),
            range_to=utc_text(decision.range_to), row_count=rows,
            positions=str(stats["positions"]), position=last, head=head,
            last_event_id=last_event_id, policy=policy.name,
            created_at=utc_text(dt.datetime.now(dt.UTC)), key_id="",
        ).authenticated(keys)
        cur.execute(_sql.query("retention", "insert_retention_checkpoint"), {
            "seq": cp.seq, "chain_id": cp.chain_id, "partition": name,
            "range_from": decision.range_from, "range_to": decision.range_to,
            "row_count": rows, "positions": cp.positions, "position": last, "head": head,
            "last_event_id": last_event_id, "policy": policy.name,
            "created_at": dt.datetime.fromisoformat(cp.created_at),
            "key_id": cp.key_id, "mac": cp.mac, "sig_key_id": cp.sig_key_id,
            "signature": cp.signature,
        })
        log_event(conn, "retention_applied", resource_type="audit_partition",
                  resource_id=name, actor_id=actor,
                  reason=policy.describe(),
                  metadata={"policy": policy.name, "range_from": cp.range_from,
                            "range_to": cp.range_to, "rows": rows,
                            "retention_checkpoint": cp.seq, "last_position": last,
                            "archive": archive.name if archive is not None else None,
                            "parquet_archive": parquet[2] if parquet is not None else None},
                  in_transaction=True)
        cur.execute(_sql.query("retention", "drop_partition"),
                    {"partition": f"audit.{name}", "seq": cp.seq})
    return cp
