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
