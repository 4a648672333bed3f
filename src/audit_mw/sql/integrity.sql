-- Statements of the sealer and the verifier (see docs/integrity.md).

-- name: canonical_columns
-- The canonical text of every column of audit.events (alias e), in COLUMNS order; a
-- fragment that the statements below embed. Only built-in functions, and forms that no
-- session setting changes: UTC timestamps with microseconds, jsonb as PostgreSQL prints it,
-- arrays as jsonb, inet as its output function prints it, booleans as true/false.
e.id,
CASE WHEN pg_catalog.isfinite(e.occurred_at)
     THEN pg_catalog.to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
     ELSE e.occurred_at::text END AS occurred_at,
e.kind, e.action, e.schema_name, e.table_name, e.record_id,
e.old_values::text AS old_values,
e.new_values::text AS new_values,
pg_catalog.to_jsonb(e.changed_fields)::text AS changed_fields,
e.app_user_id,
pg_catalog.abbrev(e.client_ip) AS client_ip,
e.request_id, e.user_agent,
e.context_extra::text AS context_extra,
pg_catalog.to_jsonb(e.context_issues)::text AS context_issues,
e.db_role, e.application_name,
pg_catalog.abbrev(e.client_addr) AS client_addr,
e.txid::text AS txid,
e.event_id::text AS event_id,
CASE e.success WHEN true THEN 'true' WHEN false THEN 'false' END AS success,
e.reason, e.resource_type, e.resource_id,
e.metadata::text AS metadata

-- name: event_columns
-- The columns of audit.events as they are now, to refuse hashing a table that has changed.
SELECT a.attname AS name
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = 'audit.events'::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: try_lock
-- One sealer at a time, per database; session-level so that it is held across batches
-- and taken before any batch's snapshot.
SELECT pg_catalog.pg_try_advisory_lock(pg_catalog.hashtext('audit_mw.seal')) AS locked;

-- name: unlock
SELECT pg_catalog.pg_advisory_unlock(pg_catalog.hashtext('audit_mw.seal'));

-- name: repeatable_read
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;

-- name: read_only_snapshot
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: chain_id
SELECT chain_id::text AS chain_id FROM audit.chains;

-- name: create_chain
INSERT INTO audit.chains (chain_id) VALUES (%(chain_id)s);

-- name: chain_head
SELECT position, event_id, event_txid::text AS event_txid, entry_hash
FROM audit.chain ORDER BY position DESC LIMIT 1;

-- name: checkpoint_columns
seq, chain_id::text AS chain_id, position, entry_count, head_hash, last_event_id,
pg_catalog.to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at,
key_id, mac, sig_key_id, signature

-- name: last_checkpoint
SELECT {columns} FROM audit.checkpoints ORDER BY seq DESC LIMIT 1;

-- name: checkpoints
SELECT {columns} FROM audit.checkpoints ORDER BY seq;

-- name: checkpoints_after
SELECT {columns} FROM audit.checkpoints WHERE seq > %(seq)s ORDER BY seq;

-- name: insert_checkpoint
INSERT INTO audit.checkpoints (seq, chain_id, position, entry_count, head_hash,
                               last_event_id, created_at, key_id, mac, sig_key_id, signature)
VALUES (%(seq)s, %(chain_id)s, %(position)s, %(count)s, %(head)s, %(last_event_id)s,
        %(created_at)s, %(key_id)s, %(mac)s, %(sig_key_id)s, %(signature)s);

-- name: sealable
-- The next events in chain order that can no longer change: committed (or aborted) before
-- every transaction still running, i.e. below this snapshot's xmin. Runs under REPEATABLE
-- READ, so the xmin and the rows come from one snapshot.
SELECT {columns}
FROM audit.events AS e
WHERE (e.txid, e.id) > (%(txid)s::xid8, %(id)s)
  AND e.txid < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
ORDER BY e.txid, e.id
LIMIT %(limit)s;

-- name: copy_chain
COPY audit.chain (position, event_id, event_txid, content_hash, entry_hash) FROM STDIN;

-- name: unsealed_count
-- Events after the sealed ones in chain order (committed or not yet sealable).
SELECT pg_catalog.count(*) AS unsealed
FROM audit.events AS e
WHERE (e.txid, e.id) > (%(txid)s::xid8, %(id)s);

-- name: chain_entries
-- The chain in position order with each sealed event's canonical text; a gone event comes
-- back with present = false.
SELECT c.position, c.event_id, c.event_txid::text AS event_txid, c.content_hash,
       c.entry_hash, e.id IS NOT NULL AS present, {columns}
FROM audit.chain AS c
LEFT JOIN audit.events AS e ON e.id = c.event_id
WHERE c.position > %(after)s
ORDER BY c.position;

-- name: chain_position_of_content
SELECT position FROM audit.chain WHERE content_hash = %(hash)s ORDER BY position LIMIT 1;

-- name: order_at_position
SELECT event_txid::text AS t, event_id AS i FROM audit.chain WHERE position = %(position)s;

-- name: event_at_position
SELECT event_id FROM audit.chain WHERE position = %(position)s;

-- name: inserted_events
-- Events inside the sealed range (in chain order) that the chain does not hold: forged in.
SELECT e.id, e.txid::text AS txid,
       (SELECT pg_catalog.min(c.position) FROM audit.chain AS c
        WHERE (c.event_txid, c.event_id) > (e.txid, e.id)) AS before_position
FROM audit.events AS e
WHERE (e.txid, e.id) <= (%(txid)s::xid8, %(id)s)
  AND (e.txid, e.id) > (%(start_txid)s::xid8, %(start_id)s)
  AND NOT EXISTS (SELECT 1 FROM audit.chain AS c WHERE c.event_id = e.id)
ORDER BY e.txid, e.id
LIMIT 1;
