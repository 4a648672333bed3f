-- Statements used by tracking.track(), untrack() and status().

-- name: resolve_table
-- The table a user named, resolved with the session's search_path; only tables qualify.
SELECT c.oid::bigint AS oid, n.nspname AS schema_name, c.relname AS table_name,
       c.relkind::text AS relkind
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = pg_catalog.to_regclass(%(name)s);

-- name: table_columns
SELECT a.attname AS name
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = %(oid)s::oid AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum;

-- name: primary_key_columns
-- Key columns in key order, read from the catalog once, at track time.
SELECT a.attname AS name
FROM pg_catalog.pg_index AS i
CROSS JOIN LATERAL pg_catalog.unnest(i.indkey) WITH ORDINALITY AS k(attnum, position)
JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %(oid)s::oid AND i.indisprimary
ORDER BY k.position;

-- name: drop_triggers
DROP TRIGGER IF EXISTS audit_mw_insert ON {table};
DROP TRIGGER IF EXISTS audit_mw_update ON {table};
DROP TRIGGER IF EXISTS audit_mw_delete ON {table};
DROP TRIGGER IF EXISTS audit_mw_truncate ON {table};

-- name: create_triggers
-- One trigger call per statement, over its transition tables; UPDATE pairs the old and new
-- version of each row by position (see migration 0007) and skips rows whose captured
-- columns did not change (jsonb comparison works for every type, json and point included).
CREATE TRIGGER audit_mw_insert AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_insert({keys}, {excluded}, {masked}, {schema_name}, {table_name});
CREATE TRIGGER audit_mw_update AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_update_rows({keys}, {excluded}, {masked}, {schema_name}, {table_name});
CREATE TRIGGER audit_mw_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_delete({keys}, {excluded}, {masked}, {schema_name}, {table_name});
CREATE TRIGGER audit_mw_truncate AFTER TRUNCATE ON {table}
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_truncate({keys}, {excluded}, {masked},
                                                   {schema_name}, {table_name});
-- ALWAYS: capture also fires under session_replication_role = replica, so no setting a
-- session can change skips it. (Tables on a logical-replication subscriber are not tracked
-- unless someone runs track there; trigger definitions are not replicated.)
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_insert;
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_update;
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_delete;
ALTER TABLE {table} ENABLE ALWAYS TRIGGER audit_mw_truncate;

-- name: comment_trigger
COMMENT ON TRIGGER {trigger} ON {table} IS {comment};

-- name: table_triggers
-- The audit_mw triggers present on a table, with their definition and state.
SELECT t.tgname AS name, t.tgenabled AS enabled,
       pg_catalog.pg_get_triggerdef(t.oid) AS definition
FROM pg_catalog.pg_trigger AS t
WHERE t.tgrelid = %(oid)s::oid AND t.tgname LIKE 'audit\_mw\_%%' AND NOT t.tgisinternal
ORDER BY t.tgname;

-- name: upsert_tracked
INSERT INTO audit.tracked_tables (schema_name, table_name, key_columns, excluded, masked,
                                  trigger_hash)
VALUES (%(schema_name)s, %(table_name)s, %(key_columns)s, %(excluded)s, %(masked)s,
        %(trigger_hash)s)
ON CONFLICT (schema_name, table_name) DO UPDATE
SET key_columns = EXCLUDED.key_columns, excluded = EXCLUDED.excluded,
    masked = EXCLUDED.masked, trigger_hash = EXCLUDED.trigger_hash,
    tracked_at = pg_catalog.now();

-- name: delete_tracked
DELETE FROM audit.tracked_tables WHERE schema_name = %(schema_name)s AND table_name = %(table_name)s;

-- name: split_name
-- A qualified name as status prints it, split like SQL would (an error if it is not a name).
SELECT pg_catalog.parse_ident(%(name)s) AS parts;

-- name: delete_dropped_tracked
-- Only the record of a table that no longer exists: a live table is untracked by name.
DELETE FROM audit.tracked_tables AS t
WHERE t.schema_name = %(schema_name)s AND t.table_name = %(table_name)s
  AND pg_catalog.to_regclass(pg_catalog.quote_ident(t.schema_name) || '.'
                             || pg_catalog.quote_ident(t.table_name)) IS NULL;

-- name: tracked_tables
SELECT t.schema_name, t.table_name, t.key_columns, t.excluded, t.masked, t.trigger_hash,
       pg_catalog.to_regclass(pg_catalog.quote_ident(t.schema_name) || '.'
                              || pg_catalog.quote_ident(t.table_name))::oid::bigint AS oid
FROM audit.tracked_tables AS t
ORDER BY t.schema_name, t.table_name;
