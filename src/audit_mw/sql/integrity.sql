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

-- name: content_bytes
-- The content encoding of docs/integrity.md, built from the canonical texts of a subquery
-- aliased t: per column 0x00 for NULL, else 0x01, the UTF-8 length as 4 bytes big-endian,
-- and the UTF-8 bytes (the database encoding is UTF8, so octet_length counts UTF-8 bytes).
-- Built server-side so that a row crosses the wire as one value.
CASE WHEN t.occurred_at IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.occurred_at))
          || pg_catalog.convert_to(t.occurred_at, 'UTF8') END
|| CASE WHEN t.kind IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.kind))
          || pg_catalog.convert_to(t.kind, 'UTF8') END
|| CASE WHEN t.action IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.action))
          || pg_catalog.convert_to(t.action, 'UTF8') END
|| CASE WHEN t.schema_name IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.schema_name))
          || pg_catalog.convert_to(t.schema_name, 'UTF8') END
|| CASE WHEN t.table_name IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.table_name))
          || pg_catalog.convert_to(t.table_name, 'UTF8') END
|| CASE WHEN t.record_id IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.record_id))
          || pg_catalog.convert_to(t.record_id, 'UTF8') END
|| CASE WHEN t.old_values IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.old_values))
          || pg_catalog.convert_to(t.old_values, 'UTF8') END
|| CASE WHEN t.new_values IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.new_values))
          || pg_catalog.convert_to(t.new_values, 'UTF8') END
|| CASE WHEN t.changed_fields IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.changed_fields))
          || pg_catalog.convert_to(t.changed_fields, 'UTF8') END
|| CASE WHEN t.app_user_id IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.app_user_id))
          || pg_catalog.convert_to(t.app_user_id, 'UTF8') END
|| CASE WHEN t.client_ip IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.client_ip))
          || pg_catalog.convert_to(t.client_ip, 'UTF8') END
|| CASE WHEN t.request_id IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.request_id))
          || pg_catalog.convert_to(t.request_id, 'UTF8') END
|| CASE WHEN t.user_agent IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.user_agent))
          || pg_catalog.convert_to(t.user_agent, 'UTF8') END
|| CASE WHEN t.context_extra IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.context_extra))
          || pg_catalog.convert_to(t.context_extra, 'UTF8') END
|| CASE WHEN t.context_issues IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.context_issues))
          || pg_catalog.convert_to(t.context_issues, 'UTF8') END
|| CASE WHEN t.db_role IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.db_role))
          || pg_catalog.convert_to(t.db_role, 'UTF8') END
|| CASE WHEN t.application_name IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.application_name))
          || pg_catalog.convert_to(t.application_name, 'UTF8') END
|| CASE WHEN t.client_addr IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.client_addr))
          || pg_catalog.convert_to(t.client_addr, 'UTF8') END
|| CASE WHEN t.txid IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.txid))
          || pg_catalog.convert_to(t.txid, 'UTF8') END
|| CASE WHEN t.event_id IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.event_id))
          || pg_catalog.convert_to(t.event_id, 'UTF8') END
|| CASE WHEN t.success IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.success))
          || pg_catalog.convert_to(t.success, 'UTF8') END
|| CASE WHEN t.reason IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.reason))
          || pg_catalog.convert_to(t.reason, 'UTF8') END
|| CASE WHEN t.resource_type IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.resource_type))
          || pg_catalog.convert_to(t.resource_type, 'UTF8') END
|| CASE WHEN t.resource_id IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.resource_id))
          || pg_catalog.convert_to(t.resource_id, 'UTF8') END
|| CASE WHEN t.metadata IS NULL THEN pg_catalog.decode('00', 'hex')
     ELSE pg_catalog.decode('01', 'hex') || pg_catalog.int4send(pg_catalog.octet_length(t.metadata))
          || pg_catalog.convert_to(t.metadata, 'UTF8') END

-- name: event_columns
-- The columns of audit.events as they are now, to refuse hashing a table that has changed.
SELECT a.attname AS name
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = 'audit.events'::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: server_encoding
SELECT pg_catalog.current_setting('server_encoding');

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

-- name: pin_session
-- The settings the canonical texts and checkpoint timestamps depend on, pinned for this
-- transaction whatever the session (or PGTZ, PGDATESTYLE, ALTER ROLE ... SET) chose: a POSIX
-- zone such as 'UTC+14' redefines the name UTC that AT TIME ZONE 'UTC' looks up, DateStyle
-- and IntervalStyle change date and interval text, extra_float_digits float text, and a
-- search_path with a schema before pg_catalog could shadow an operator.
SELECT pg_catalog.set_config('TimeZone', 'UTC', true),
       pg_catalog.set_config('DateStyle', 'ISO, YMD', true),
       pg_catalog.set_config('IntervalStyle', 'postgres', true),
       pg_catalog.set_config('extra_float_digits', '1', true),
       pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true);

-- name: stream_work_mem
-- The ordered stream sorts wide rows; the default 4MB spills them to disk.
SET LOCAL work_mem = '64MB';

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

-- name: seal_horizon
-- Where one seal run stops: this snapshot's xmin. Everything below it is final, and a run
-- that stops here ends even while writers keep committing.
SELECT pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot()) AS horizon;

-- name: sealable
-- The next events in chain order that can no longer change: committed (or aborted) before
-- every transaction still running, i.e. below this snapshot's xmin, and below the run's
-- horizon. Runs under REPEATABLE READ, so the xmin and the rows come from one snapshot.
SELECT t.id, t.txid, {content} AS content
FROM (SELECT {columns}, e.txid AS order_txid
      FROM audit.events AS e
      WHERE (e.txid, e.id) > (%(txid)s::xid8, %(id)s)
        AND e.txid < pg_catalog.pg_snapshot_xmin(pg_catalog.pg_current_snapshot())
        AND e.txid < %(horizon)s::xid8
      ORDER BY e.txid, e.id
      LIMIT %(limit)s) AS t
ORDER BY t.order_txid, t.id;

-- name: copy_chain
COPY audit.chain (position, event_id, event_txid, content_hash, entry_hash) FROM STDIN;

-- name: unsealed_count
-- Events after the sealed ones in chain order (committed or not yet sealable).
SELECT pg_catalog.count(*) AS unsealed
FROM audit.events AS e
WHERE (e.txid, e.id) > (%(txid)s::xid8, %(id)s);

-- name: chain_entries
-- The chain in position order with each sealed event's encoded content; a gone event comes
-- back with present = false. Streamed with COPY, so the server works while the client hashes.
COPY (
    SELECT c.position, c.event_id, c.content_hash, c.entry_hash, t.id IS NOT NULL AS present,
           t.txid, {content} AS content
    FROM audit.chain AS c
    LEFT JOIN (SELECT {columns} FROM audit.events AS e) AS t ON t.id = c.event_id
    WHERE c.position > %(after)s
    ORDER BY c.position
) TO STDOUT (FORMAT BINARY)

-- name: chain_rows
-- The chain in position order with every column of each event as canonical text: what an
-- export carries, and what verify_entries() checks without a database.
SELECT c.position, c.content_hash, c.entry_hash, {columns}
FROM audit.chain AS c
JOIN audit.events AS e ON e.id = c.event_id
WHERE c.position > %(after)s
ORDER BY c.position;

-- name: event_id_count
-- How many rows carry one event id (the primary key is (id, occurred_at): a forged copy
-- with another timestamp can share the id).
SELECT pg_catalog.count(*) AS n FROM audit.events WHERE id = %(id)s;

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

-- name: insert_verification_run
-- One row per recorded verification (migration 0005); needs INSERT on the table, which the
-- schema owner has.
INSERT INTO audit.verification_runs (started_at, status, anchored, checked, unsealed,
                                     checkpoints, head_position, anchored_position, chain_id,
                                     kind, first_bad_id, first_bad_position, detail)
VALUES (%(started_at)s, %(status)s, %(anchored)s, %(checked)s, %(unsealed)s, %(checkpoints)s,
        %(head_position)s, %(anchored_position)s, %(chain_id)s, %(kind)s, %(first_bad_id)s,
        %(first_bad_position)s, %(detail)s)
RETURNING id;

-- name: retention_tables
-- Whether retention checkpoints exist here (they arrive with migration 0006).
SELECT pg_catalog.to_regclass('audit.retention_checkpoints') IS NOT NULL AS present;

-- name: retention_checkpoints
-- Every retention checkpoint, timestamps as the canonical text the MAC covers.
SELECT seq, chain_id::text AS chain_id, partition_name,
       pg_catalog.to_char(range_from AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           AS range_from,
       pg_catalog.to_char(range_to AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           AS range_to,
       row_count, positions::text AS positions, position, head_hash, last_event_id, policy,
       pg_catalog.to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
           AS created_at,
       key_id, mac, sig_key_id, signature
FROM audit.retention_checkpoints
ORDER BY seq;
