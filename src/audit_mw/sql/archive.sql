-- Statements of the Parquet archive (see docs/archive.md). The partition is filled in with
-- psycopg.sql.Identifier; literal braces are doubled.

-- name: lock
-- One archiver at a time: the index is read, extended and written back. A session lock:
-- it outlives the short snapshot the month is read in, and is released by unlock.
SELECT pg_catalog.pg_advisory_lock(pg_catalog.hashtext('audit_mw.archive'));

-- name: unlock
SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('audit_mw.archive'));

-- name: snapshot
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: month_rows
-- A partition's events in chain order with their chain entries, every column as its
-- canonical text (integrity.canonical_columns); an unsealed event comes last
-- with a null position, and the writer refuses the month.
SELECT c.position, c.content_hash, c.entry_hash, {columns}
FROM {partition} AS e
LEFT JOIN audit.chain AS c ON c.event_id = e.id
ORDER BY c.position NULLS LAST, e.txid, e.id;

-- name: month_links
-- The chain entries from the month's first position to its covering checkpoint whose events
-- are not in this partition (other months, or already dropped by retention), as hashes: with
-- them a verifier links the month's entries to each other and to the checkpoint's head.
SELECT c.position, c.event_id, c.content_hash
FROM audit.chain AS c
WHERE c.position BETWEEN %(first)s AND %(last)s
  AND NOT EXISTS (SELECT 1 FROM {partition} AS e WHERE e.id = c.event_id)
ORDER BY c.position;

-- name: live_rows
-- The live trail's events of a time range (all when unbounded), every column as its
-- canonical text, with the chain position of the sealed ones: what the DuckDB helper
-- reads into Arrow next to the archive.
SELECT c.position, {columns}
FROM audit.events AS e
LEFT JOIN audit.chain AS c ON c.event_id = e.id
WHERE (%(start)s::timestamptz IS NULL OR e.occurred_at >= %(start)s::timestamptz)
  AND (%(end)s::timestamptz IS NULL OR e.occurred_at < %(end)s::timestamptz)
ORDER BY e.occurred_at, e.id;
