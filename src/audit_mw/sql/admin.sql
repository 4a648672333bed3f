-- Statements used by the admin routes and the export commands (audit_mw.admin).
--
-- {where} is built by audit_mw.admin.query.where_clause from an allow-list: column names
-- as identifiers, every value a bind parameter. Events are served as row_to_json(e), so
-- every column of audit.events is included, in table order, without a list to keep in step.

-- name: read_only
-- Reads run in a read-only transaction, in UTC (row_to_json prints timestamptz in the
-- session time zone), and may not run longer than the app allows.
SELECT pg_catalog.set_config('transaction_read_only', 'on', true),
       pg_catalog.set_config('TimeZone', 'UTC', true),
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

-- name: export_rows
-- Oldest first, the same order a verifier walks the chain in.
SELECT e.id, pg_catalog.row_to_json(e)::text AS event
FROM audit.events AS e
WHERE e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
ORDER BY e.id;

-- name: integrity_tables
-- Which integrity tables exist (they arrive with the integrity migration).
SELECT pg_catalog.to_regclass('audit.chain') IS NOT NULL AS has_chain,
       pg_catalog.to_regclass('audit.checkpoints') IS NOT NULL AS has_checkpoints;

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
