-- Statements of partition maintenance and retention (audit_mw.capture.partitions, audit_mw.retention).

-- name: ensure_partitions
SELECT partition_name, outcome
FROM audit.ensure_partitions(%(months_ahead)s, COALESCE(%(now)s::timestamptz,
                                                        pg_catalog.statement_timestamp()));

-- name: create_partition
SELECT audit.create_partition(%(start)s, %(end)s) AS partition_name;

-- name: partitions
-- Every partition with its bounds, the planner's row estimate and its size on disk
-- (heap, indexes and TOAST).
SELECT p.partition_name, p.range_from, p.range_to, p.is_default,
       GREATEST(c.reltuples, 0)::bigint AS estimated_rows,
       pg_catalog.pg_total_relation_size(p.partition) AS total_bytes
FROM audit.event_partitions() AS p
JOIN pg_catalog.pg_class AS c ON c.oid = p.partition
ORDER BY p.is_default, p.range_from NULLS FIRST, p.partition_name;

-- name: partition_guards
-- Partitions of audit.events whose append-only guards are missing or not ENABLE ALWAYS.
SELECT p.partition_name, g.name AS guard, t.tgenabled::text AS enabled
FROM audit.event_partitions() AS p
CROSS JOIN (VALUES ('events_append_only'), ('events_no_truncate')) AS g(name)
LEFT JOIN pg_catalog.pg_trigger AS t
       ON t.tgrelid = p.partition AND t.tgname = g.name AND NOT t.tgisinternal
WHERE t.oid IS NULL OR t.tgenabled <> 'A'
ORDER BY 1, 2;

-- name: partition_stats
-- What retention needs to know of one partition: its rows, how many are not sealed, the
-- chain positions of the sealed ones (canonical int8multirange text) and the last of them.
-- Filled in with .format(partition=...): literal braces are doubled.
SELECT pg_catalog.count(*) AS row_count,
       pg_catalog.count(*) FILTER (WHERE c.position IS NULL) AS unsealed,
       COALESCE(pg_catalog.range_agg(pg_catalog.int8range(c.position, c.position, '[]'))
                    FILTER (WHERE c.position IS NOT NULL),
                '{{}}'::int8multirange)::text AS positions,
       pg_catalog.max(c.position) AS last_position
FROM {partition} AS e
LEFT JOIN audit.chain AS c ON c.event_id = e.id;

-- name: partition_holds
SELECT h AS hold_id FROM audit.partition_holds(%(partition)s::regclass) AS h;

-- name: seal_lock
-- The sealer's lock, held while a partition is dropped so that no seal runs in between.
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('audit_mw.seal'));

-- name: chain_at
SELECT c.chain_id::text AS chain_id,
       h.position, h.event_id, h.entry_hash
FROM audit.chains AS c
LEFT JOIN audit.chain AS h ON h.position = %(position)s;

-- name: next_retention_seq
SELECT COALESCE(pg_catalog.max(seq), 0) + 1 AS seq FROM audit.retention_checkpoints;

-- name: insert_retention_checkpoint
INSERT INTO audit.retention_checkpoints (
    seq, chain_id, partition_name, range_from, range_to, row_count, positions, position,
    head_hash, last_event_id, policy, created_at, key_id, mac, sig_key_id, signature)
VALUES (%(seq)s, %(chain_id)s, %(partition)s, %(range_from)s, %(range_to)s, %(row_count)s,
        %(positions)s::int8multirange, %(position)s, %(head)s, %(last_event_id)s, %(policy)s,
        %(created_at)s, %(key_id)s, %(mac)s, %(sig_key_id)s, %(signature)s);

-- name: drop_partition
SELECT audit.drop_partition(%(partition)s::regclass, %(seq)s) AS dropped_rows;

-- name: add_hold
INSERT INTO audit.legal_holds (kind, schema_name, table_name, record_id, app_user_id,
                               range_from, range_to, reason, created_by)
VALUES (%(kind)s, %(schema_name)s, %(table_name)s, %(record_id)s, %(app_user_id)s,
        %(range_from)s, %(range_to)s, %(reason)s,
        COALESCE(%(created_by)s::text, session_user))
RETURNING id;

-- name: release_hold
INSERT INTO audit.legal_hold_releases (hold_id, reason, released_by)
SELECT h.id, %(reason)s, COALESCE(%(released_by)s::text, session_user)
FROM audit.legal_holds AS h
WHERE h.id = %(hold_id)s
ON CONFLICT (hold_id) DO NOTHING
RETURNING hold_id;

-- name: holds
SELECT h.id, h.kind, h.schema_name, h.table_name, h.record_id, h.app_user_id, h.range_from,
       h.range_to, h.reason, h.created_by, h.created_at, r.released_at, r.released_by,
       r.reason AS release_reason
FROM audit.legal_holds AS h
LEFT JOIN audit.legal_hold_releases AS r ON r.hold_id = h.id
WHERE %(all)s OR r.hold_id IS NULL
ORDER BY h.id;
