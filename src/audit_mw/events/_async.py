"""The asynchronous event writer: moves records to the database, the spool and the log.

A thin shell around :mod:`audit_mw.events._core`, and the source of its sync twin
``_sync.py``, which ``tools/async_to_sync.py`` generates. Spool file operations stay
synchronous: they are short, local, and only run when the database failed or the spool
holds something.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

from audit_mw import _sql
from audit_mw.events._core import EventRecord, EventResult, EventSettings
from audit_mw.events._outcome import (
    ReplayResult,
    check_target,
    is_transient,
    mark_spooled,
    parse_lines,
    reject,
    replay_error,
    spooled,
    stored,
    write_failed,
)
from audit_mw.events.spool import Spool, SpoolBatch

__all__ = ["AsyncDatabase", "replay", "write"]

#: Where events are written: a pool (a separate checkout per event) or a connection.
AsyncDatabase: TypeAlias = "AsyncConnectionPool[Any] | psycopg.AsyncConnection[Any]"

_BATCH = 200


async def _execute(
    conn: psycopg.AsyncConnection[Any], params: dict[str, Any]
) -> tuple[Any, ...]:
    async with conn.cursor(row_factory=tuple_row) as cur:
        await cur.execute(_sql.query("events", "log_event"), params)
        row = await cur.fetchone()
    if row is None:  # the function always returns one row
        raise psycopg.DataError("audit.log_event() returned no row")
    return row


async def _store(
    db: AsyncDatabase, record: EventRecord, *, in_transaction: bool, settings: EventSettings
) -> tuple[Any, ...]:
    if isinstance(db, AsyncConnectionPool):
        async with db.connection(timeout=settings.timeout) as conn, conn.transaction():
            return await _execute(conn, record.params)
    if in_transaction:
        return await _execute(db, record.params)
    async with db.transaction():
        return await _execute(db, record.params)


async def write(
    db: AsyncDatabase, record: EventRecord, *, in_transaction: bool, settings: EventSettings
) -> EventResult:
    """Store ``record``; on failure spool it or raise, as ``settings`` say."""
    check_target(db, in_transaction, pool_types=(AsyncConnectionPool,),
                 connection_types=(psycopg.AsyncConnection,))
    try:
        row = await _store(db, record, in_transaction=in_transaction, settings=settings)
    except psycopg.Error as exc:
        # Only a failure that can pass is spooled: a permanent one would block the spool
        # and fail again on every replay, so it is the caller's to handle, now.
        spool = None if in_transaction or not is_transient(exc) else settings.spool
        if spool is not None:
            try:
                spool.append(mark_spooled(record).to_json())
            except OSError as spool_exc:
                raise write_failed(record, settings, exc, spool_error=spool_exc) from exc
            return spooled(record, settings, exc, spool)
        raise write_failed(record, settings, exc) from exc
    result = stored(record, settings, row)
    if settings.spool is not None and not in_transaction and settings.spool.has_pending():
        try:
            await replay(db, settings.spool, settings=settings, wait=False)
        except Exception as exc:
            replay_error(settings.spool, settings, exc)
    return result


async def replay(
    db: AsyncDatabase, spool: Spool, *, settings: EventSettings, wait: bool = True
) -> ReplayResult:
    """Store every spooled event (idempotent); see :func:`audit_mw.events.replay`."""
    check_target(db, False, pool_types=(AsyncConnectionPool,),
                 connection_types=(psycopg.AsyncConnection,))
    with spool.replaying(wait=wait) as batch:
        if batch is None:
            return ReplayResult(skipped=True)
        result = ReplayResult()
        records = parse_lines(batch, settings, result)
        try:
            for start in range(0, len(records), _BATCH):
                chunk = records[start:start + _BATCH]
                try:
                    rows = await _store_many(db, [r for _, r in chunk], settings)
                except Exception as exc:
                    if is_transient(exc):
                        raise
                    # Something in the chunk is refused for good: one by one, so that
                    # everything else is stored and only that record is set aside.
                    await _store_each(db, chunk, batch, result, settings)
                    continue
                for (index, _), row in zip(chunk, rows, strict=True):
                    batch.stored(index)
                    result.count(row)
        except psycopg.Error as exc:
            result.error = exc
        result.pending = batch.pending
    return result.report(spool, settings)


async def _store_each(
    db: AsyncDatabase, chunk: list[tuple[int, EventRecord]], batch: SpoolBatch,
    result: ReplayResult, settings: EventSettings,
) -> None:
    for index, record in chunk:
        try:
            row = (await _store_many(db, [record], settings))[0]
        except Exception as exc:
            if is_transient(exc):
                raise
            reject(batch, index, record, exc, settings=settings, result=result)
        else:
            batch.stored(index)
            result.count(row)


async def _store_many(
    db: AsyncDatabase, records: list[EventRecord], settings: EventSettings
) -> list[tuple[Any, ...]]:
    # One transaction per chunk: a chunk is stored whole or not at all, and a replay that
    # stops half-way leaves only unstored (or harmlessly re-sendable) lines behind.
    if isinstance(db, AsyncConnectionPool):
        async with db.connection(timeout=settings.timeout) as conn, conn.transaction():
            return [await _execute(conn, r.params) for r in records]
    async with db.transaction():
        return [await _execute(db, r.params) for r in records]
