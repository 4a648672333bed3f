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

-- name: tracking
-- For this transaction: track puts capture on the partitions itself, so the event trigger
-- that gives new partitions their parent's capture (migration 0010) leaves them alone. It
-- believes this only of a superuser or a member of audit_owner.
SELECT pg_catalog.set_config('audit_mw.tracking', 'on', true);

-- name: tracking_done
-- Unset at the end of track, which may run inside a longer transaction (a migration's).
SELECT pg_catalog.set_config('audit_mw.tracking', '', true);

-- name: drop_triggers
DROP TRIGGER IF EXISTS audit_mw_insert ON {table};
DROP TRIGGER IF EXISTS audit_mw_update ON {table};
DROP TRIGGER IF EXISTS audit_mw_delete ON {table};
DROP TRIGGER IF EXISTS audit_mw_truncate ON {table};

-- name: create_triggers
-- One trigger call per statement, over its transition tables; UPDATE pairs the old and new
-- version of each row by position (see migration 0007) and skips rows whose captured
-- columns did not change (jsonb comparison works for every type, json and point included).
-- Arguments: key columns, excluded and masked columns by name, the tracked table's schema
-- and name (a partition's triggers name the table that was tracked), and excluded and
-- masked columns by attribute number in this relation (a renamed column stays out), and
-- 'json' when a json column needs the conversion that keeps what jsonb cannot hold.
CREATE TRIGGER audit_mw_insert AFTER INSERT ON {table}
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_insert({keys}, {excluded}, {masked}, {schema_name}, {table_name}, {excluded_nums}, {masked_nums}, {json_flag});
CREATE TRIGGER audit_mw_update AFTER UPDATE ON {table}
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_update_rows({keys}, {excluded}, {masked}, {schema_name}, {table_name}, {excluded_nums}, {masked_nums}, {json_flag});
CREATE TRIGGER audit_mw_delete AFTER DELETE ON {table}
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION audit.capture_delete({keys}, {excluded}, {masked}, {schema_name}, {table_name}, {excluded_nums}, {masked_nums}, {json_flag});
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

-- name: partitions
-- Every partition below a partitioned table, at any depth. A statement aimed at a partition
-- fires the partition's own statement triggers, not the parent's: each gets capture too.
SELECT n.nspname AS schema_name, c.relname AS table_name, c.oid::bigint AS oid
FROM pg_catalog.pg_partition_tree(%(oid)s::oid::regclass) AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE t.relid <> %(oid)s::oid AND c.relkind IN ('r', 'p')
ORDER BY t.level, c.relname;

-- name: attnums
-- Attribute numbers of named columns in one relation (a partition's may differ).
SELECT COALESCE(pg_catalog.array_agg(a.attnum ORDER BY a.attnum), '{}')::text AS nums
FROM pg_catalog.pg_attribute AS a
WHERE a.attrelid = %(oid)s::oid AND a.attname = ANY (%(names)s::text[]) AND a.attnum > 0
  AND NOT a.attisdropped;

-- name: unsafe_casts
-- Casts to json/jsonb that a non-superuser wrote, on a type the table is made of.
SELECT column_name, type_name, cast_function, function_owner
FROM audit.unsafe_casts(%(oid)s::oid::regclass);

-- name: has_json
-- Whether a json value is somewhere in the table's types (see migration 0009).
SELECT EXISTS (SELECT 1 FROM audit.column_type_tree(%(oid)s::oid::regclass) AS t
               WHERE t.type_oid = 'pg_catalog.json'::pg_catalog.regtype) AS has_json;

-- name: may_track
-- track creates triggers that execute the capture functions: only a role that may execute
-- them (the schema owner, a superuser) can.
SELECT pg_catalog.has_function_privilege('audit.capture_insert()', 'EXECUTE') AS allowed;

-- name: comment_trigger
COMMENT ON TRIGGER {trigger} ON {table} IS {comment};

-- name: table_triggers
-- The audit_mw triggers present on a table, with their definition and state.
SELECT t.tgname AS name, t.tgenabled AS enabled, t.tgnargs AS nargs,
       pg_catalog.pg_get_triggerdef(t.oid) AS definition,
       t.tgfoid::pg_catalog.regprocedure::text AS function
FROM pg_catalog.pg_trigger AS t
WHERE t.tgrelid = %(oid)s::oid AND t.tgname LIKE 'audit\_mw\_%%' AND NOT t.tgisinternal
ORDER BY t.tgname;

-- name: upsert_tracked
INSERT INTO audit.tracked_tables (schema_name, table_name, key_columns, excluded, masked,
                                  trigger_hash, relid)
VALUES (%(schema_name)s, %(table_name)s, %(key_columns)s, %(excluded)s, %(masked)s,
        %(trigger_hash)s, %(oid)s::oid)
ON CONFLICT (schema_name, table_name) DO UPDATE
SET key_columns = EXCLUDED.key_columns, excluded = EXCLUDED.excluded,
    masked = EXCLUDED.masked, trigger_hash = EXCLUDED.trigger_hash,
    relid = EXCLUDED.relid, tracked_at = pg_catalog.now();

-- name: renamed_tracked
-- Whether the table is recorded under another name (it has been renamed since it was
-- tracked); asked first so that a role without DELETE (a migration role) tracks the others.
SELECT EXISTS (SELECT 1 FROM audit.tracked_tables AS t
               WHERE t.relid = %(oid)s::oid
                 AND (t.schema_name, t.table_name)
                     IS DISTINCT FROM (%(schema_name)s, %(table_name)s)) AS renamed;

-- name: delete_renamed_tracked
-- The record of a table tracked under another name: it has been renamed since.
DELETE FROM audit.tracked_tables AS t
WHERE t.relid = %(oid)s::oid
  AND (t.schema_name, t.table_name) IS DISTINCT FROM (%(schema_name)s, %(table_name)s);

-- name: delete_tracked
-- By name, or by the relation for a table renamed since it was tracked.
DELETE FROM audit.tracked_tables
WHERE (schema_name = %(schema_name)s AND table_name = %(table_name)s) OR relid = %(oid)s::oid;

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
-- For schema versions before 8 (no relid).
SELECT t.schema_name, t.table_name, t.key_columns, t.excluded, t.masked, t.trigger_hash,
       pg_catalog.to_regclass(pg_catalog.quote_ident(t.schema_name) || '.'
                              || pg_catalog.quote_ident(t.table_name))::oid::bigint AS oid,
       NULL::text AS renamed_to
FROM audit.tracked_tables AS t
ORDER BY t.schema_name, t.table_name;

-- name: tracked_tables_v8
-- oid: the table by its recorded name; renamed_to: where a table tracked under a name that
-- no longer resolves went (the same relation, still carrying capture triggers).
SELECT t.schema_name, t.table_name, t.key_columns, t.excluded, t.masked, t.trigger_hash,
       pg_catalog.to_regclass(pg_catalog.quote_ident(t.schema_name) || '.'
                              || pg_catalog.quote_ident(t.table_name))::oid::bigint AS oid,
       (SELECT pg_catalog.quote_ident(n.nspname) || '.' || pg_catalog.quote_ident(c.relname)
        FROM pg_catalog.pg_class AS c JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
        WHERE c.oid = t.relid
          AND (n.nspname, c.relname) IS DISTINCT FROM (t.schema_name, t.table_name)
          AND EXISTS (SELECT 1 FROM pg_catalog.pg_trigger AS g
                      WHERE g.tgrelid = c.oid AND g.tgname = 'audit_mw_insert')) AS renamed_to
FROM audit.tracked_tables AS t
ORDER BY t.schema_name, t.table_name;

-- name: app_role_facts
-- What makes the application's role dangerous to the trail: being a superuser, owning a
-- tracked table (it can disable its capture), a type one is made of (it can add a cast),
-- or the audit schema; being a member of the audit owner or capture roles.
SELECT r.rolname IS NOT NULL AS exists, r.rolsuper AS superuser,
       ARRAY(
           SELECT 'tracked table ' || t.schema_name || '.' || t.table_name
           FROM audit.tracked_tables AS t
           JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
           WHERE c.relowner = r.oid
           UNION ALL
           SELECT DISTINCT 'type ' || ty.oid::regtype::text || ', used by tracked table '
                  || t.schema_name || '.' || t.table_name
           FROM audit.tracked_tables AS t
           CROSS JOIN LATERAL audit.column_type_tree(t.relid::regclass) AS tree
           JOIN pg_catalog.pg_type AS ty ON ty.oid = tree.type_oid
           WHERE ty.typowner = r.oid AND t.relid IS NOT NULL AND ty.oid >= 16384
           UNION ALL
           SELECT 'the audit schema' FROM pg_catalog.pg_namespace AS n
           WHERE n.nspname = 'audit' AND n.nspowner = r.oid
           UNION ALL
           SELECT 'membership of ' || m.rolname
           FROM pg_catalog.pg_roles AS m
           WHERE m.rolname IN ('audit_owner', 'audit_capture')
             AND pg_catalog.pg_has_role(r.oid, m.oid, 'MEMBER')
       ) AS owns
FROM (SELECT 1) AS one
LEFT JOIN pg_catalog.pg_roles AS r ON r.rolname = %(role)s;
