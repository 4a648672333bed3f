-- Statements used by schema.install() and schema.status().

-- name: lock
-- One installer or tracker at a time, per database.
SELECT pg_catalog.pg_advisory_xact_lock(pg_catalog.hashtext('audit_mw.install'));

-- name: pin_search_path
-- Object definitions print schema-qualified names relative to search_path; hashing them
-- under one fixed path makes the hashes comparable between sessions. Returns the old path,
-- which restore_search_path puts back (the caller may be inside a longer transaction).
SELECT pg_catalog.current_setting('search_path') AS old_path,
       pg_catalog.set_config('search_path', 'pg_catalog, pg_temp', true) AS new_path;

-- name: restore_search_path
SELECT pg_catalog.set_config('search_path', %(old_path)s, true);

-- name: role_facts
SELECT r.rolsuper AS is_superuser,
       r.rolcreaterole AS can_create_role,
       session_user AS session_role,
       current_user AS current_role,
       pg_catalog.current_setting('server_version_num')::int AS server_version
FROM pg_catalog.pg_roles AS r
WHERE r.rolname = current_user;

-- name: role_exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s);

-- name: create_role
CREATE ROLE {role} NOLOGIN;

-- name: grant_role_to_current
GRANT {role} TO CURRENT_USER;

-- name: grant_role
GRANT {role} TO {grantee};

-- name: create_schema
CREATE SCHEMA IF NOT EXISTS audit AUTHORIZATION {owner};

-- name: create_migrations_table
CREATE TABLE IF NOT EXISTS audit.schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    checksum    text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- name: applied_migrations
SELECT version, name, checksum FROM audit.schema_migrations ORDER BY version;

-- name: record_migration
INSERT INTO audit.schema_migrations (version, name, checksum)
VALUES (%(version)s, %(name)s, %(checksum)s);

-- name: schema_exists
SELECT pg_catalog.to_regnamespace('audit') IS NOT NULL
   AND pg_catalog.to_regclass('audit.schema_migrations') IS NOT NULL;

-- name: grant_privileges
-- audit_reader may read the trail; audit_writer may record application events through the
-- functions made for it (it never gets INSERT on the table).
GRANT USAGE ON SCHEMA audit TO {reader}, {writer};
GRANT SELECT ON ALL TABLES IN SCHEMA audit TO {reader};

-- name: function_definitions
-- Every function in the audit schema, with a hash of its full definition.
SELECT p.oid::regprocedure::text AS name,
       pg_catalog.md5(pg_catalog.pg_get_functiondef(p.oid)) AS definition_hash
FROM pg_catalog.pg_proc AS p
WHERE p.pronamespace = 'audit'::regnamespace
ORDER BY 1;

-- name: clear_object_hashes
DELETE FROM audit.object_hashes;

-- name: record_object_hash
INSERT INTO audit.object_hashes (object_name, definition_hash)
VALUES (%(name)s, %(hash)s);

-- name: object_hashes
SELECT object_name, definition_hash FROM audit.object_hashes ORDER BY 1;

-- name: guard_triggers
-- The append-only guards on the audit schema's tables and their state ('A' always, as
-- installed; 'O' origin only, 'R' replica only, 'D' disabled).
SELECT c.relname || '.' || t.tgname AS name, t.tgenabled::text AS enabled
FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'audit'::regnamespace AND NOT t.tgisinternal
  AND t.tgfoid = 'audit.refuse_change()'::regprocedure
  -- Partitions come and go (retention); their guards are checked per partition.
  AND NOT c.relispartition
ORDER BY 1;

-- name: schema_owner
SELECT pg_catalog.pg_get_userbyid(n.nspowner) AS owner
FROM pg_catalog.pg_namespace AS n WHERE n.nspname = 'audit';

-- name: capture_functions_to_owner
-- Before migrations run (as the owner): the capture functions go back to the schema owner,
-- who replaces them; install hands them to the capture role again afterwards. So does the
-- function that captures new partitions, which a superuser owns where DDL is watched.
DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'audit'::regnamespace
               AND (p.proowner = (SELECT oid FROM pg_catalog.pg_roles
                                  WHERE rolname = 'audit_capture')
                    OR p.oid = pg_catalog.to_regprocedure('audit.watch_partitions()'))
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO audit_owner', f);
    END LOOP;
END
$$;

-- name: capture_privileges
-- The capture role may insert into the trail, and nothing else (CREATE only for the moment
-- it takes over its functions; revoke_capture_create takes it back).
GRANT USAGE, CREATE ON SCHEMA audit TO {capture};
GRANT INSERT ON audit.events TO {capture};
-- The trail's ids come from a sequence default (0008), which INSERT alone does not cover.
GRANT USAGE ON SEQUENCE audit.events_id_seq TO {capture};
GRANT EXECUTE ON FUNCTION audit.column_type_tree(regclass), audit.unsafe_casts(regclass),
    audit.refuse_unsafe_casts(regclass), audit.recorded_table(oid, text, text) TO {capture};

-- name: function_owner
ALTER FUNCTION {function} OWNER TO {owner};

-- name: revoke_capture_create
-- The capture role keeps no CREATE; the owner's members may still create capture triggers
-- (track), which needs EXECUTE on the trigger functions.
REVOKE CREATE ON SCHEMA audit FROM {capture};
GRANT EXECUTE ON FUNCTION audit.capture_insert(), audit.capture_delete(),
    audit.capture_update(), audit.capture_update_rows(), audit.capture_truncate()
    TO audit_owner;

-- name: shipped_functions
-- Each function of the audit schema with a fingerprint of everything that decides what it
-- does and with whose rights: body, language, kind, SECURITY DEFINER, strictness,
-- volatility, settings (search_path), arguments and result. Compared with the fingerprints
-- shipped in the package (sql/shipped.json), not with anything the database stores.
SELECT p.oid::regprocedure::text AS name,
       pg_catalog.md5(pg_catalog.concat_ws('|', p.prosrc, l.lanname, p.prokind::text,
           p.prosecdef::text, p.proleakproof::text, p.proisstrict::text, p.provolatile::text,
           p.proparallel::text, pg_catalog.array_to_string(p.proconfig, ','),
           pg_catalog.pg_get_function_result(p.oid),
           pg_catalog.pg_get_function_identity_arguments(p.oid))) AS fingerprint,
       pg_catalog.pg_get_userbyid(p.proowner) AS owner,
       (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.oid = p.proowner)
           AS owner_is_superuser
FROM pg_catalog.pg_proc AS p
JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
WHERE p.pronamespace = 'audit'::regnamespace
ORDER BY 1;

-- name: shipped_triggers
-- Every trigger on the audit schema's own tables (partitions are checked per partition).
SELECT c.relname || '.' || t.tgname AS name, pg_catalog.pg_get_triggerdef(t.oid) AS definition,
       t.tgenabled::text AS enabled
FROM pg_catalog.pg_trigger AS t
JOIN pg_catalog.pg_class AS c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'audit'::regnamespace AND NOT t.tgisinternal AND NOT c.relispartition
ORDER BY 1;

-- name: shipped_objects
-- Relations (not partitions of the trail or their indexes), standalone types and operators
-- in the audit schema, as kind:name.
SELECT 'relation:' || c.relname || ':' || c.relkind::text AS name
FROM pg_catalog.pg_class AS c
WHERE c.relnamespace = 'audit'::regnamespace AND NOT c.relispartition
UNION ALL
SELECT 'type:' || t.typname
FROM pg_catalog.pg_type AS t
WHERE t.typnamespace = 'audit'::regnamespace AND t.typrelid = 0 AND t.typcategory <> 'A'
UNION ALL
SELECT 'operator:' || o.oid::regoperator::text
FROM pg_catalog.pg_operator AS o
WHERE o.oprnamespace = 'audit'::regnamespace
ORDER BY 1;

-- name: capture_role_exists
SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %(role)s) AS present;

-- name: watch_ddl
-- DDL on the timeline (see migration 0009), and capture on new partitions (0010). Event
-- triggers need a superuser; the partitions' function is owned by the installing superuser
-- (see 0010 for why it may be).
DROP EVENT TRIGGER IF EXISTS audit_mw_ddl;
DROP EVENT TRIGGER IF EXISTS audit_mw_drop;
DROP EVENT TRIGGER IF EXISTS audit_mw_partitions;
ALTER FUNCTION audit.watch_partitions() OWNER TO CURRENT_USER;
CREATE EVENT TRIGGER audit_mw_ddl ON ddl_command_end EXECUTE FUNCTION audit.watch_ddl();
CREATE EVENT TRIGGER audit_mw_drop ON sql_drop EXECUTE FUNCTION audit.watch_drop();
CREATE EVENT TRIGGER audit_mw_partitions ON ddl_command_end
    WHEN TAG IN ('CREATE TABLE', 'ALTER TABLE')
    EXECUTE FUNCTION audit.watch_partitions();
ALTER EVENT TRIGGER audit_mw_ddl ENABLE ALWAYS;
ALTER EVENT TRIGGER audit_mw_drop ENABLE ALWAYS;
ALTER EVENT TRIGGER audit_mw_partitions ENABLE ALWAYS;

-- name: ddl_watched
-- The event triggers of the schema version (two before version 10, three from it) present,
-- on the package's functions, ENABLE ALWAYS. to_regprocedure: a function a version lacks
-- matches nothing.
SELECT pg_catalog.count(*) = %(expected)s AS watched
FROM pg_catalog.pg_event_trigger AS e
WHERE (e.evtname, e.evtevent, e.evtfoid) IN (
          ('audit_mw_ddl', 'ddl_command_end', pg_catalog.to_regprocedure('audit.watch_ddl()')),
          ('audit_mw_drop', 'sql_drop', pg_catalog.to_regprocedure('audit.watch_drop()')),
          ('audit_mw_partitions', 'ddl_command_end',
           pg_catalog.to_regprocedure('audit.watch_partitions()')))
  AND e.evtenabled = 'A';
