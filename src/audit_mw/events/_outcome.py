"""What the sync and async event writers share besides SQL: checks, outcomes, log records.

No I/O apart from emitting log records: the shells call these before and after their
database and spool work, so both report every outcome the same way.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import psycopg
import psycopg_pool
from psycopg import pq

from audit_mw.errors import ConfigurationError, EventWriteError
from audit_mw.events._core import EventRecord, EventResult, EventSettings
from audit_mw.events.log import emit
from audit_mw.events.redaction import clean_text
from audit_mw.events.spool import Spool, SpoolBatch

__all__ = [
    "ReplayResult",
    "check_target",
    "is_transient",
    "mark_spooled",
    "parse_line",
    "parse_lines",
    "reject",
    "replay_error",
    "spooled",
    "stored",
    "write_failed",
]

# A connection in one of these states is inside a transaction that may still roll back.
_IN_TRANSACTION = frozenset({
    pq.TransactionStatus.INTRANS, pq.TransactionStatus.INERROR, pq.TransactionStatus.ACTIVE,
})


def check_target(
    db: object,
    in_transaction: bool,
    *,
    pool_types: tuple[type, ...],
    connection_types: tuple[type, ...],
) -> None:
    """Refuse a target that cannot give the write the isolation asked for.

    - a pool with ``in_transaction=True``: a checkout is another connection, so the event
      could not share the caller's transaction;
    - a connection inside a transaction without ``in_transaction=True``: a rollback of
      that transaction would erase the event (a failed login must survive it). Pass a pool,
      or a connection with no transaction open.
    """
    if isinstance(db, pool_types):
        if in_transaction:
            raise ConfigurationError(
                "in_transaction=True needs the connection of that transaction, not a pool"
            )
        return
    if isinstance(db, connection_types):
        status = db.info.transaction_status  # type: ignore[attr-defined]  # both have .info
        if not in_transaction and status in _IN_TRANSACTION:
            raise ConfigurationError(
                "the connection is inside a transaction whose rollback would erase this"
                " event; pass a pool (the event gets its own connection), a connection with"
                " no transaction open, or in_transaction=True to make it part of that"
                " transaction"
            )
        return
    names = " or ".join(t.__name__ for t in (*pool_types, *connection_types))
    raise ConfigurationError(f"events are written to a {names}, not {type(db).__name__}")


#: SQLSTATEs of failures that pass: the server is shutting down or starting (57P01-57P03),
#: out of resources or connection slots (class 53), a statement cancelled by a timeout
#: (57014), a serialisation failure or deadlock (40001, 40P01). Class 08 (connection
#: exceptions) is matched by its prefix.
_TRANSIENT_STATES: Final = frozenset({"57P01", "57P02", "57P03", "57014", "40001", "40P01"})


def is_transient(exc: BaseException) -> bool:
    """Whether a failure to store an event can pass, so that spooling it makes sense.

    Transient: the connection could not be made or was lost (an ``OperationalError`` with
    no SQLSTATE: the server never answered), SQLSTATE class 08 or 53, the server shutting
    down, a timeout, a serialisation failure; a pool timeout or a pool queue that is full.
    Everything else (a constraint, a value the database refuses, a missing function or
    privilege) is permanent: it would fail the same way on every replay, so it is raised at
    once and never spooled.
    """
    if isinstance(exc, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith(("08", "53")) or state in _TRANSIENT_STATES


def _error_text(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return clean_text(f"{type(exc).__name__}: {first}" if first else type(exc).__name__)


def stored(record: EventRecord, settings: EventSettings, row: tuple[Any, ...]) -> EventResult:
    """Log a stored event; return its result."""
    stored_id, stored_at, created = row
    emit(settings.logger, "info", "audit_mw.event", **record.log_fields(),
         audit_id=stored_id, occurred_at=stored_at.isoformat(), duplicate=not created)
    return EventResult(event_id=_uuid(record), stored=True, id=stored_id,
                       occurred_at=stored_at, created=bool(created))


def spooled(record: EventRecord, settings: EventSettings, exc: BaseException,
            spool: Spool) -> EventResult:
    """Log an event that went to the spool (an alert: the trail is behind)."""
    emit(settings.logger, "error", "audit_mw.event_spooled", **record.log_fields(),
         error=_error_text(exc), spool=str(spool.path))
    return EventResult(event_id=_uuid(record), stored=False, spooled=True)


def write_failed(record: EventRecord, settings: EventSettings, exc: BaseException, *,
                 spool_error: BaseException | None = None) -> EventWriteError:
    """Log an event that is lost unless the caller acts; return the error to raise."""
    fields = record.log_fields()
    if spool_error is not None:
        fields["spool_error"] = _error_text(spool_error)
    emit(settings.logger, "error", "audit_mw.event_write_failed", **fields,
         error=_error_text(exc))
    if spool_error is not None:
        where = " and could not be spooled"
    elif not is_transient(exc):
        where = " (the database refused it; not spooled, it would fail again)"
    else:
        where = ""
    return EventWriteError(
        f"could not store the {record.params['kind']} event {record.params['action']!r}"
        f" (event_id {record.event_id}){where}: {_error_text(exc)}"
    )


def mark_spooled(record: EventRecord) -> EventRecord:
    """The record as spooled: ``context_extra`` notes when, by the application's clock.

    The stored ``occurred_at`` is the database time of the replay (the application can
    never set it); this note keeps the time the event happened, labelled as the client's.
    """
    params = dict(record.params)
    extra = json.loads(params["context_extra"]) if params["context_extra"] else {}
    extra["audit_mw.spooled_at"] = datetime.now(UTC).isoformat(timespec="microseconds")
    params["context_extra"] = json.dumps(extra, separators=(",", ":"), ensure_ascii=False,
                                         sort_keys=True)
    return EventRecord(params)


def reject(batch: SpoolBatch, index: int, record: EventRecord, exc: BaseException, *,
           settings: EventSettings, result: ReplayResult) -> None:
    """A spooled record the database refuses for good: set it aside with the reason, log
    it, and go on with the others (it must never block the spool)."""
    reason = _error_text(exc)
    batch.rejected(index, reason)
    result.rejected += 1
    emit(settings.logger, "error", "audit_mw.spool_record_rejected",
         **record.log_fields(), error=reason)


def parse_lines(batch: SpoolBatch, settings: EventSettings,
                result: ReplayResult) -> list[tuple[int, EventRecord]]:
    """The records of a replay batch; unreadable lines are marked rejected and logged."""
    for line in batch.torn:
        parse_line(line, settings)
        result.rejected += 1
    records = []
    for index, line in enumerate(batch.lines):
        record = parse_line(line, settings)
        if record is None:
            batch.rejected(index)
            result.rejected += 1
        else:
            records.append((index, record))
    return records


def parse_line(line: str, settings: EventSettings) -> EventRecord | None:
    """A spooled record, or ``None`` (logged) when the line is not one."""
    try:
        return EventRecord.from_json(line)
    except (ValueError, TypeError, KeyError) as exc:
        emit(settings.logger, "error", "audit_mw.spool_line_rejected",
             error=_error_text(exc), length=len(line))
        return None


@dataclass
class ReplayResult:
    """What a replay did: events ``stored`` now, ``duplicates`` (already stored, skipped),
    lines ``rejected`` (unreadable, or refused by the database for good: moved to
    ``<spool>.rejected``, with the reason for the latter), lines still
    ``pending`` (the database failed again: ``error``), or ``skipped`` (another replay
    was running)."""

    stored: int = 0
    duplicates: int = 0
    rejected: int = 0
    pending: int = 0
    skipped: bool = False
    error: BaseException | None = None

    def count(self, row: tuple[Any, ...]) -> None:
        if row[2]:
            self.stored += 1
        else:
            self.duplicates += 1

    def report(self, spool: Spool, settings: EventSettings) -> ReplayResult:
        fields: dict[str, Any] = {
            "spool": str(spool.path), "stored": self.stored, "duplicates": self.duplicates,
            "rejected": self.rejected, "pending": self.pending,
        }
        if self.error is not None:
            emit(settings.logger, "error", "audit_mw.spool_replay_failed", **fields,
                 error=_error_text(self.error))
        elif self.stored or self.duplicates or self.rejected:
            emit(settings.logger, "info", "audit_mw.spool_replayed", **fields)
        return self


def _uuid(record: EventRecord) -> uuid.UUID:
    return uuid.UUID(record.event_id)


def replay_error(spool: Spool, settings: EventSettings, exc: BaseException) -> None:
    """Log a replay that could not run at all (the spool file is unusable)."""
    emit(settings.logger, "error", "audit_mw.spool_replay_failed", spool=str(spool.path),
         error=_error_text(exc))
