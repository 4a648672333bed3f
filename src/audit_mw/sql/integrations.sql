-- Statements used by audit_mw.integrations.

-- name: grant_migration_role
-- What a migration role needs to track its own tables without owning the audit schema
-- (docs/integration-alembic.md, "The role model"). Run once by the administrator who
-- installed the schema. The role owns the tables it tracks (it creates the triggers on
-- them); it may call the capture functions only as triggers (PostgreSQL refuses a direct
-- call of a trigger function); it checks its table's types for casts to json that capture
-- would refuse; it records the tables it tracks and their options.
GRANT USAGE ON SCHEMA audit TO {role};
GRANT SELECT ON audit.schema_migrations TO {role};
GRANT EXECUTE ON FUNCTION audit.capture_insert(), audit.capture_update_rows(),
    audit.capture_delete(), audit.capture_truncate() TO {role};
GRANT EXECUTE ON FUNCTION audit.column_type_tree(regclass), audit.unsafe_casts(regclass)
    TO {role};
GRANT SELECT, INSERT, UPDATE ON audit.tracked_tables TO {role};

-- name: grant_migration_untrack
-- Only when migrations may also untrack (drop a table from the registry).
GRANT DELETE ON audit.tracked_tables TO {role};
