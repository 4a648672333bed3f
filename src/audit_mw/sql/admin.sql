-- Statements used by the admin routes and the export commands (audit_mw.admin).
--
-- {where} is built by audit_mw.admin.query.where_clause from an allow-list: column names
-- as identifiers, every value a bind parameter. Events are served as row_to_json(e), so
-- every column of audit.events is included, in table order, without a list to keep in step.

-- name: read_only
-- Reads run in a read-only transaction, in UTC (row_to_json prints timestamptz in the
-- session time zone), with the output settings pinned (as integrity.sql's pin_session), and
-- may not run longer than the app allows.
SELECT pg_catalog.set_config('transaction_read_only', 'on', true),
       pg_catalog.set_config('TimeZone', 'UTC', true),
       pg_catalog.set_config('DateStyle', 'ISO, YMD', true),
       pg_catalog.set_config('IntervalStyle', 'postgres', true),
       pg_catalog.set_config('extra_float_digits', '1', true),
       pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true),
       pg_catalog.set_config('statement_timeout', %(timeout_ms)s, true);

-- name: events_page
-- Newest first. id is insertion order: the keyset (id < before_id) uses the primary key
-- and stays fast at any depth. One row more than the limit tells whether a next page exists.
SELECT e.id, pg_catalog.row_to_json(e)::text AS event
FROM audit.events AS e
WHERE {where}
ORDER BY e.id DESC
LIMIT %(limit)s OFFSET %(offset)s;

-- name: events_count
-- Matches counted up to a cap: an exact count of millions of rows is unbounded work.
SELECT pg_catalog.count(*) AS total
FROM (SELECT 1 FROM audit.events AS e WHERE {where} LIMIT %(cap)s) AS matches;

-- name: event_by_id
SELECT e.id, pg_catalog.row_to_json(e)::text AS event
FROM audit.events AS e
WHERE e.id = %(id)s;

-- name: record_history
-- Oldest first; served by events_record_idx (table_name, record_id, id).
SELECT e.id, pg_catalog.row_to_json(e)::text AS event
FROM audit.events AS e
WHERE e.table_name = %(table)s
  AND e.record_id = %(record_id)s
  AND (%(schema)s::text IS NULL OR e.schema_name = %(schema)s::text)
  AND e.id > %(after_id)s
ORDER BY e.id
LIMIT %(limit)s;

-- name: event_columns
-- The columns of audit.events in table order: the CSV header of an export.
SELECT a.attname::text AS name
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = 'audit.events'::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: export_snapshot
-- An export reads one snapshot, so that its count and its rows agree.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: export_limits
-- An export may take long, but not forever, and may not sit in an open transaction while a
-- client does not read: the server ends the session (and its transaction) after idle_ms.
SELECT pg_catalog.set_config('statement_timeout', %(total_ms)s, true),
       pg_catalog.set_config('idle_in_transaction_session_timeout', %(idle_ms)s, true);

-- name: export_rows
-- In chain order, (txid, id): the sealed events first, in chain position order (the order
-- a verifier walks the chain in), then the events not sealed yet. Each sealed event comes
-- with its chain entry. json_nulls names the jsonb columns that hold a JSON null, which
-- row_to_json prints the same as an SQL NULL; the hash tells them apart, so must the export.
SELECT e.id, pg_catalog.row_to_json(e)::text AS event,
       c.position, c.content_hash, c.entry_hash,
       NULLIF(pg_catalog.array_remove(ARRAY[
           CASE WHEN pg_catalog.jsonb_typeof(e.old_values) = 'null' THEN 'old_values' END,
           CASE WHEN pg_catalog.jsonb_typeof(e.new_values) = 'null' THEN 'new_values' END,
           CASE WHEN pg_catalog.jsonb_typeof(e.context_extra) = 'null' THEN 'context_extra' END,
           CASE WHEN pg_catalog.jsonb_typeof(e.metadata) = 'null' THEN 'metadata' END
       ]::text[], NULL), '{}'::text[]) AS json_nulls
FROM audit.events AS e
LEFT JOIN audit.chain AS c ON c.event_id = e.id
WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
ORDER BY e.txid, e.id;

-- name: export_chain_id
SELECT chain_id::text AS chain_id FROM audit.chains;

-- name: export_previous_hash
-- The entry hash before the first exported position: where the exported slice hangs on.
SELECT entry_hash FROM audit.chain WHERE position = %(position)s;

-- name: export_covering_checkpoint
-- The first checkpoint at or after the last exported position: it authenticates the slice.
SELECT {columns} FROM audit.checkpoints
WHERE position >= %(position)s
ORDER BY position, seq
LIMIT 1;

-- name: export_links
-- The chain entries from the first exported position to the covering checkpoint whose
-- events are not in the export (outside the range), as hashes only: with them a verifier
-- links the exported entries to each other and to the checkpoint's head. A chain entry
-- whose event is gone is left out, so that the verifier sees the hole.
SELECT c.position, c.event_id, c.content_hash
FROM audit.chain AS c
JOIN audit.events AS e ON e.id = c.event_id
WHERE c.position BETWEEN %(first)s AND %(last)s
  AND NOT (e.occurred_at >= %(start)s AND e.occurred_at < %(end)s)
ORDER BY c.position;

-- name: integrity_tables
-- Which integrity tables exist (they arrive with the integrity migration).
SELECT pg_catalog.to_regclass('audit.chain') IS NOT NULL AS has_chain,
       pg_catalog.to_regclass('audit.checkpoints') IS NOT NULL AS has_checkpoints,
       pg_catalog.to_regclass('audit.verification_runs') IS NOT NULL AS has_runs;

-- name: latest_event
-- The newest id, from the primary key: an upper bound of the number of events.
SELECT pg_catalog.max(e.id) AS latest_id FROM audit.events AS e;

-- name: latest_checkpoint
SELECT c.seq, c.position, c.last_event_id, c.created_at, c.key_id,
       c.sig_key_id IS NOT NULL AS signed
FROM audit.checkpoints AS c
ORDER BY c.seq DESC
LIMIT 1;

-- name: sealed_position
SELECT pg_catalog.max(c.position) AS position FROM audit.chain AS c;

-- name: latest_verification
-- The newest recorded verification run (migration 0005), from the primary key.
SELECT r.id, r.started_at, r.finished_at, r.status, r.anchored, r.checked, r.unsealed,
       r.checkpoints, r.head_position, r.anchored_position, r.chain_id, r.kind,
       r.first_bad_id, r.first_bad_position, r.detail, r.db_role
FROM audit.verification_runs AS r
ORDER BY r.id DESC
LIMIT 1;
