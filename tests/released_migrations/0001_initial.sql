-- audit_mw 0001: the audit schema, the append-only event table and row-change capture.
--
-- Released migrations are never edited; later changes come as new numbered files.
-- This file runs inside one transaction, as the role that owns the audit schema
-- (see schema.py: install() creates the schema, then switches to its owner with SET ROLE).

COMMENT ON SCHEMA audit IS 'audit_mw: append-only audit trail. Do not modify by hand.';

-- One timeline for row changes (kind = 'data') and, later, application events.
CREATE TABLE audit.events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    occurred_at       timestamptz NOT NULL DEFAULT pg_catalog.statement_timestamp(),
    kind              text NOT NULL,
    action            text NOT NULL,
    schema_name       text,
    table_name        text,
    record_id         text,
    old_values        jsonb,
    new_values        jsonb,
    changed_fields    text[],
    app_user_id       text,
    client_ip         inet,
    request_id        text,
    user_agent        text,
    context_extra     jsonb,
    context_issues    text[],
    db_role           text NOT NULL DEFAULT session_user,
    application_name  text,
    client_addr       inet,
    txid              xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    -- Application events (kind 'auth', 'admin', 'access'; NULL on row changes):
    event_id          uuid,
    success           boolean,
    reason            text,
    resource_type     text,
    resource_id       text,
    metadata          jsonb
);

COMMENT ON TABLE audit.events IS
    'audit_mw: every captured row change and application event, append-only.';
COMMENT ON COLUMN audit.events.record_id IS
    'primary key of the changed row: the value as text for one key column, '
    'a JSON array of the values in key order for a composite key, NULL without a key';
COMMENT ON COLUMN audit.events.event_id IS
    'client-generated id of an application event; unique, so a retried write is stored once';
COMMENT ON COLUMN audit.events.context_issues IS
    'malformed session context that was stored safely: user_id_truncated, client_ip_invalid, '
    'request_id_truncated, user_agent_truncated, extra_invalid';

-- Lookups: one record's history, one user's actions over time, time ranges.
CREATE INDEX events_record_idx ON audit.events (table_name, record_id, id);
CREATE INDEX events_user_time_idx ON audit.events (app_user_id, occurred_at);
CREATE INDEX events_time_brin_idx ON audit.events USING brin (occurred_at);
CREATE UNIQUE INDEX events_event_id_key ON audit.events (event_id) WHERE event_id IS NOT NULL;

-- Which tables are tracked, and how. Written by track()/untrack(), read by status().
CREATE TABLE audit.tracked_tables (
    schema_name   text NOT NULL,
    table_name    text NOT NULL,
    key_columns   text[] NOT NULL,
    excluded      text[] NOT NULL DEFAULT '{}',
    masked        text[] NOT NULL DEFAULT '{}',
    trigger_hash  text NOT NULL,
    tracked_at    timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (schema_name, table_name)
);

-- Hashes of the functions as installed, so that status() can tell a changed function.
CREATE TABLE audit.object_hashes (
    object_name   text PRIMARY KEY,
    definition_hash text NOT NULL
);

-- The session context as the triggers see it, already validated.
CREATE TYPE audit.session_context AS (
    user_id     text,
    client_ip   inet,
    request_id  text,
    user_agent  text,
    extra       jsonb,
    issues      text[]
);

-- Reads the audit.* custom settings that the application sets (see context.md).
-- An empty string means absent. A malformed value never fails the business write: it is
-- truncated or dropped, and the fact is recorded in context_issues.
-- Not SECURITY DEFINER: it reads the caller's own settings; callers pin search_path.
-- One expression without FROM, so that the planner inlines it into the caller: a SQL
-- function it cannot inline runs through the function executor at about 10 us a call.
CREATE FUNCTION audit.read_context() RETURNS audit.session_context
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ROW(
        pg_catalog.left(NULLIF(pg_catalog.current_setting('audit.user_id', true), ''), 256),
        CASE WHEN pg_catalog.pg_input_is_valid(
                      NULLIF(pg_catalog.current_setting('audit.ip_address', true), ''), 'inet')
             THEN pg_catalog.current_setting('audit.ip_address', true)::inet END,
        pg_catalog.left(NULLIF(pg_catalog.current_setting('audit.request_id', true), ''), 128),
        pg_catalog.left(NULLIF(pg_catalog.current_setting('audit.user_agent', true), ''), 512),
        -- Too long is invalid too: JSON cut short would not be JSON.
        CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.extra', true)) <= 4096
                  AND pg_catalog.pg_input_is_valid(
                      NULLIF(pg_catalog.current_setting('audit.extra', true), ''), 'jsonb')
             THEN pg_catalog.current_setting('audit.extra', true)::jsonb END,
        CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.user_id', true)) > 256
                  OR NOT pg_catalog.pg_input_is_valid(
                      COALESCE(NULLIF(pg_catalog.current_setting('audit.ip_address', true), ''),
                               '0.0.0.0'), 'inet')
                  OR pg_catalog.length(pg_catalog.current_setting('audit.request_id', true)) > 128
                  OR pg_catalog.length(pg_catalog.current_setting('audit.user_agent', true)) > 512
                  OR pg_catalog.length(pg_catalog.current_setting('audit.extra', true)) > 4096
                  OR NOT pg_catalog.pg_input_is_valid(
                      COALESCE(NULLIF(pg_catalog.current_setting('audit.extra', true), ''),
                               '{}'), 'jsonb')
             THEN pg_catalog.array_remove(ARRAY[
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.user_id', true))
                           > 256 THEN 'user_id_truncated' END,
                 CASE WHEN NOT pg_catalog.pg_input_is_valid(COALESCE(NULLIF(
                               pg_catalog.current_setting('audit.ip_address', true), ''),
                               '0.0.0.0'), 'inet') THEN 'client_ip_invalid' END,
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.request_id', true))
                           > 128 THEN 'request_id_truncated' END,
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.user_agent', true))
                           > 512 THEN 'user_agent_truncated' END,
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.extra', true))
                           > 4096 OR NOT pg_catalog.pg_input_is_valid(COALESCE(NULLIF(
                               pg_catalog.current_setting('audit.extra', true), ''), '{}'),
                               'jsonb') THEN 'extra_invalid' END
             ], NULL) END
    )::audit.session_context
$$;

-- The primary key of a row, from its jsonb image: the value as text for one key column,
-- a JSON array for a composite key, NULL for a table tracked without a key.
-- The capture functions compute the one-column case inline and call this for the others.
CREATE FUNCTION audit.record_key(row_image jsonb, key_columns text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    k      text;
    result jsonb := '[]';
BEGIN
    CASE pg_catalog.cardinality(key_columns)
    WHEN 0 THEN
        RETURN NULL;
    WHEN 1 THEN
        RETURN row_image ->> key_columns[1];
    ELSE
        FOREACH k IN ARRAY key_columns LOOP
            -- Wrapped in an array, so that a value that is itself an array stays one element.
            result := result || pg_catalog.jsonb_build_array(row_image -> k);
        END LOOP;
        RETURN result::text;
    END CASE;
END
$$;

-- Masked columns keep the fact of a value but not the value: '[masked]', or null for null.
-- The capture functions skip the call when a table has no masked column.
CREATE FUNCTION audit.mask(row_image jsonb, masked text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    k text;
BEGIN
    IF row_image IS NULL THEN
        RETURN NULL;
    END IF;
    FOREACH k IN ARRAY masked LOOP
        IF row_image ? k THEN
            row_image := pg_catalog.jsonb_set(row_image, ARRAY[k],
                CASE WHEN pg_catalog.jsonb_typeof(row_image -> k) = 'null' THEN 'null'::jsonb
                     ELSE '"[masked]"'::jsonb END);
        END IF;
    END LOOP;
    RETURN row_image;
END
$$;

-- Row-change capture. One function per operation serves every tracked table; the trigger's
-- arguments carry the table's key columns, excluded and masked columns, fixed at track time
-- so that no catalog lookup happens per row.
--   TG_ARGV[0] key columns, TG_ARGV[1] excluded columns, TG_ARGV[2] masked columns,
--   TG_ARGV[3] schema and TG_ARGV[4] name of the tracked table (a row trigger on a
--   partitioned table fires on the partition; the trail names the table that was tracked)
-- INSERT and DELETE are statement-level (transition tables); UPDATE is row-level so that
-- the old and new image of each row are paired exactly, even when the key changes.
--
-- Cost matters here (see docs/benchmarks.md): every audited write pays it. So the common
-- cases are computed inline (one key column: a `->>`; no masked column: no call at all),
-- the context is read once per statement for INSERT and DELETE, each row image is converted
-- to jsonb once (OFFSET 0 keeps the planner from copying to_jsonb() into every reference),
-- and an UPDATE runs two small statements (its changed fields, then a one-row INSERT).

CREATE FUNCTION audit.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    ctx         audit.session_context := audit.read_context();
BEGIN
    INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, new_values,
                              app_user_id, client_ip, request_id, user_agent, context_extra,
                              context_issues, application_name, client_addr)
    SELECT 'data', 'INSERT', TG_ARGV[3], TG_ARGV[4],
           CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN r.j ->> key_columns[1]
                ELSE audit.record_key(r.j, key_columns) END,
           CASE WHEN pg_catalog.cardinality(masked) = 0 THEN r.j ELSE audit.mask(r.j, masked) END,
           ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
           NULLIF(pg_catalog.current_setting('application_name'), ''), pg_catalog.inet_client_addr()
    FROM (SELECT pg_catalog.to_jsonb(n) - excluded AS j FROM new_rows AS n OFFSET 0) AS r;
    RETURN NULL;
END
$$;

CREATE FUNCTION audit.capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    ctx         audit.session_context := audit.read_context();
BEGIN
    INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                              app_user_id, client_ip, request_id, user_agent, context_extra,
                              context_issues, application_name, client_addr)
    SELECT 'data', 'DELETE', TG_ARGV[3], TG_ARGV[4],
           CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN r.j ->> key_columns[1]
                ELSE audit.record_key(r.j, key_columns) END,
           CASE WHEN pg_catalog.cardinality(masked) = 0 THEN r.j ELSE audit.mask(r.j, masked) END,
           ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
           NULLIF(pg_catalog.current_setting('application_name'), ''), pg_catalog.inet_client_addr()
    FROM (SELECT pg_catalog.to_jsonb(o) - excluded AS j FROM old_rows AS o OFFSET 0) AS r;
    RETURN NULL;
END
$$;

CREATE FUNCTION audit.capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    old_image   jsonb := pg_catalog.to_jsonb(OLD) - excluded;
    new_image   jsonb := pg_catalog.to_jsonb(NEW) - excluded;
    ctx         audit.session_context := audit.read_context();
    changed     text[];
BEGIN
    -- No changed field (a change to excluded columns only) means no audit row at all.
    changed := ARRAY(SELECT e.key FROM pg_catalog.jsonb_each(new_image) AS e
                     WHERE e.value IS DISTINCT FROM old_image -> e.key ORDER BY e.key);
    IF changed = '{}' THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                              new_values, changed_fields, app_user_id, client_ip, request_id,
                              user_agent, context_extra, context_issues, application_name,
                              client_addr)
    VALUES ('data', 'UPDATE', TG_ARGV[3], TG_ARGV[4],
           CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN new_image ->> key_columns[1]
                ELSE audit.record_key(new_image, key_columns) END,
           CASE WHEN pg_catalog.cardinality(masked) = 0 THEN old_image
                ELSE audit.mask(old_image, masked) END,
           CASE WHEN pg_catalog.cardinality(masked) = 0 THEN new_image
                ELSE audit.mask(new_image, masked) END,
           changed,
           ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
           NULLIF(pg_catalog.current_setting('application_name'), ''),
           pg_catalog.inet_client_addr());
    RETURN NULL;
END
$$;

CREATE FUNCTION audit.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ctx audit.session_context := audit.read_context();
BEGIN
    INSERT INTO audit.events (kind, action, schema_name, table_name, app_user_id, client_ip,
                              request_id, user_agent, context_extra, context_issues,
                              application_name, client_addr)
    VALUES ('data', 'TRUNCATE', TG_ARGV[3], TG_ARGV[4], ctx.user_id, ctx.client_ip,
            ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
            NULLIF(pg_catalog.current_setting('application_name'), ''),
            pg_catalog.inet_client_addr());
    RETURN NULL;
END
$$;

-- Append-only, loudly: any UPDATE, DELETE or TRUNCATE of the trail is an error, even for
-- the owner. ENABLE ALWAYS keeps the guard in force under session_replication_role=replica.
CREATE FUNCTION audit.refuse_change() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'audit_mw: % on %.% is not allowed: the audit trail is append-only',
        TG_OP, TG_TABLE_SCHEMA, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'retention drops whole sealed partitions; see docs on retention';
END
$$;

CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_append_only;
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_no_truncate;

-- Nobody but the owner calls these; triggers do not need EXECUTE at fire time.
REVOKE ALL ON FUNCTION audit.capture_insert(), audit.capture_delete(),
    audit.capture_update(), audit.capture_truncate(), audit.refuse_change() FROM PUBLIC;
REVOKE ALL ON ALL TABLES IN SCHEMA audit FROM PUBLIC;
