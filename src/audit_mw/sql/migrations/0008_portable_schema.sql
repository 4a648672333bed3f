-- audit_mw: one schema on PostgreSQL 15, 16, 17 and 18.
--
-- Migrations 0001, 0002 and 0006 were edited so that they run on PostgreSQL 15 and 16: the
-- releases before used pg_input_is_valid() (16 and later) and an identity column on the
-- partitioned trail (17 and later). A database installed from those earlier texts (on 17 or
-- later) is brought here to exactly the schema a fresh install has on any version; on a
-- fresh install this migration changes nothing. What it does, each step idempotent:
--
-- - the input checks audit.inet_parses(), audit.jsonb_parses(), audit.valid_inet() and
--   audit.valid_jsonb() (see 0001), and audit.read_context() and audit.log_event() using them;
-- - the ids of audit.events: from the sequence audit.events_id_seq as the column's default,
--   no longer from an identity column. The new sequence goes on from the old one's position,
--   so no id is handed out twice; the rows, their ids, the chain and the checkpoints are not
--   touched.

CREATE OR REPLACE FUNCTION audit.inet_parses(value text) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
BEGIN
    PERFORM value::pg_catalog.inet;
    RETURN true;
EXCEPTION WHEN data_exception THEN
    RETURN false;
END
$$;

CREATE OR REPLACE FUNCTION audit.jsonb_parses(value text) RETURNS boolean
LANGUAGE plpgsql STABLE STRICT PARALLEL SAFE AS $$
BEGIN
    PERFORM value::pg_catalog.jsonb;
    RETURN true;
EXCEPTION WHEN data_exception THEN
    RETURN false;
END
$$;

DO $do$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int >= 160000 THEN
        CREATE OR REPLACE FUNCTION audit.valid_inet(value text) RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT pg_catalog.pg_input_is_valid(value, 'inet') $$;
        CREATE OR REPLACE FUNCTION audit.valid_jsonb(value text) RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT pg_catalog.pg_input_is_valid(value, 'jsonb') $$;
    ELSE
        -- The common values skip the subtransaction: a plain IPv4 address, and the '{}'
        -- that audit.read_context() checks when no extra context is set.
        CREATE OR REPLACE FUNCTION audit.valid_inet(value text) RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT CASE WHEN value OPERATOR(pg_catalog.~)
                                   '^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}'
                                   '(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])$'
                          THEN true ELSE audit.inet_parses(value) END $$;
        CREATE OR REPLACE FUNCTION audit.valid_jsonb(value text) RETURNS boolean
        LANGUAGE sql STABLE PARALLEL SAFE
        AS $$ SELECT CASE WHEN value OPERATOR(pg_catalog.=) '{}' THEN true
                          ELSE audit.jsonb_parses(value) END $$;
    END IF;
END
$do$;

CREATE OR REPLACE FUNCTION audit.read_context() RETURNS audit.session_context
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT ROW(
        pg_catalog.left(NULLIF(pg_catalog.current_setting('audit.user_id', true), ''), 256),
        CASE WHEN audit.valid_inet(
                      NULLIF(pg_catalog.current_setting('audit.ip_address', true), ''))
             THEN pg_catalog.current_setting('audit.ip_address', true)::inet END,
        pg_catalog.left(NULLIF(pg_catalog.current_setting('audit.request_id', true), ''), 128),
        pg_catalog.left(NULLIF(pg_catalog.current_setting('audit.user_agent', true), ''), 512),
        -- Too long is invalid too: JSON cut short would not be JSON.
        CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.extra', true)) <= 4096
                  AND audit.valid_jsonb(
                      NULLIF(pg_catalog.current_setting('audit.extra', true), ''))
             THEN pg_catalog.current_setting('audit.extra', true)::jsonb END,
        CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.user_id', true)) > 256
                  OR NOT audit.valid_inet(
                      COALESCE(NULLIF(pg_catalog.current_setting('audit.ip_address', true), ''),
                               '0.0.0.0'))
                  OR pg_catalog.length(pg_catalog.current_setting('audit.request_id', true)) > 128
                  OR pg_catalog.length(pg_catalog.current_setting('audit.user_agent', true)) > 512
                  OR pg_catalog.length(pg_catalog.current_setting('audit.extra', true)) > 4096
                  OR NOT audit.valid_jsonb(
                      COALESCE(NULLIF(pg_catalog.current_setting('audit.extra', true), ''),
                               '{}'))
             THEN pg_catalog.array_remove(ARRAY[
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.user_id', true))
                           > 256 THEN 'user_id_truncated' END,
                 CASE WHEN NOT audit.valid_inet(COALESCE(NULLIF(
                               pg_catalog.current_setting('audit.ip_address', true), ''),
                               '0.0.0.0')) THEN 'client_ip_invalid' END,
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.request_id', true))
                           > 128 THEN 'request_id_truncated' END,
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.user_agent', true))
                           > 512 THEN 'user_agent_truncated' END,
                 CASE WHEN pg_catalog.length(pg_catalog.current_setting('audit.extra', true))
                           > 4096 OR NOT audit.valid_jsonb(COALESCE(NULLIF(
                               pg_catalog.current_setting('audit.extra', true), ''), '{}'))
                      THEN 'extra_invalid' END
             ], NULL) END
    )::audit.session_context
$$;

CREATE OR REPLACE FUNCTION audit.log_event(
    p_event_id       uuid,
    p_kind           text,
    p_action         text,
    p_success        boolean,
    p_reason         text,
    p_app_user_id    text,
    p_client_ip      text,
    p_request_id     text,
    p_user_agent     text,
    p_context_extra  jsonb,
    p_resource_type  text,
    p_resource_id    text,
    p_metadata       jsonb,
    OUT stored_id    bigint,
    OUT stored_at    timestamptz,
    OUT created      boolean
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ip_ok      boolean := p_client_ip IS NULL
                          OR audit.valid_inet(p_client_ip);
    extra_ok   boolean := p_context_extra IS NULL
                          OR (pg_catalog.jsonb_typeof(p_context_extra) = 'object'
                              AND pg_catalog.length(p_context_extra::text) <= 4096);
    meta_ok    boolean := p_metadata IS NULL
                          OR (pg_catalog.jsonb_typeof(p_metadata) = 'object'
                              AND pg_catalog.length(p_metadata::text) <= 16384);
    issues     text[];
    existing   record;
BEGIN
    IF p_event_id IS NULL THEN
        RAISE EXCEPTION 'audit_mw: an application event needs an event_id'
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    -- 'data' rows come from the capture triggers only; anything else is not ours either.
    IF p_kind IS NULL OR p_kind NOT IN ('auth', 'admin', 'access') THEN
        RAISE EXCEPTION 'audit_mw: kind % cannot be recorded as an application event',
            pg_catalog.quote_nullable(p_kind)
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'application events are of kind auth, admin or access';
    END IF;
    IF p_action IS NULL OR p_action !~ '^[a-z][a-z0-9_.:-]{0,63}$' THEN
        RAISE EXCEPTION 'audit_mw: action % is not 1-64 characters of a-z 0-9 _ . : - '
            'starting with a letter', pg_catalog.quote_nullable(p_action)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    -- Malformed values never fail the write: they are capped or dropped, and named.
    issues := pg_catalog.array_remove(ARRAY[
        CASE WHEN pg_catalog.length(p_app_user_id) > 256 THEN 'user_id_truncated' END,
        CASE WHEN NOT ip_ok THEN 'client_ip_invalid' END,
        CASE WHEN pg_catalog.length(p_request_id) > 128 THEN 'request_id_truncated' END,
        CASE WHEN pg_catalog.length(p_user_agent) > 512 THEN 'user_agent_truncated' END,
        CASE WHEN NOT extra_ok THEN 'extra_invalid' END,
        CASE WHEN pg_catalog.length(p_reason) > 512 THEN 'reason_truncated' END,
        CASE WHEN pg_catalog.length(p_resource_type) > 64 THEN 'resource_type_truncated' END,
        CASE WHEN pg_catalog.length(p_resource_id) > 256 THEN 'resource_id_truncated' END,
        CASE WHEN NOT meta_ok THEN 'metadata_invalid' END
    ], NULL);

    -- The id and time are taken first, so that the event id is claimed (or found taken) in
    -- audit.event_ids before the event is written: a concurrent retry waits on that key.
    stored_id := pg_catalog.nextval('audit.events_id_seq'::regclass);
    stored_at := pg_catalog.statement_timestamp();
    INSERT INTO audit.event_ids (event_id, stored_id, stored_at, kind, action)
    VALUES (p_event_id, stored_id, stored_at, p_kind, p_action)
    ON CONFLICT (event_id) DO NOTHING;

    IF FOUND THEN
        INSERT INTO audit.events (id, occurred_at, event_id, kind, action, success, reason,
                                  app_user_id, client_ip, request_id, user_agent,
                                  context_extra, context_issues, resource_type, resource_id,
                                  metadata, application_name, client_addr)
        VALUES (stored_id, stored_at, p_event_id, p_kind, p_action, p_success,
                pg_catalog.left(p_reason, 512),
                pg_catalog.left(p_app_user_id, 256),
                CASE WHEN ip_ok THEN p_client_ip::inet END,
                pg_catalog.left(p_request_id, 128), pg_catalog.left(p_user_agent, 512),
                CASE WHEN extra_ok THEN p_context_extra END,
                NULLIF(issues, '{}'::text[]),
                pg_catalog.left(p_resource_type, 64), pg_catalog.left(p_resource_id, 256),
                CASE WHEN meta_ok THEN p_metadata END,
                NULLIF(pg_catalog.current_setting('application_name'), ''),
                pg_catalog.inet_client_addr());
        created := true;
        RETURN;
    END IF;
    -- Stored before (a retry or a replay): return that row, unless the id was reused for a
    -- different event, which is a bug in the caller and must not pass silently.
    SELECT i.stored_id, i.stored_at, i.kind, i.action INTO existing
    FROM audit.event_ids AS i WHERE i.event_id = p_event_id;
    IF existing.kind IS DISTINCT FROM p_kind OR existing.action IS DISTINCT FROM p_action THEN
        RAISE EXCEPTION 'audit_mw: event_id % is already used by a different event', p_event_id
            USING ERRCODE = 'unique_violation';
    END IF;
    stored_id := existing.stored_id;
    stored_at := existing.stored_at;
    created := false;
END
$$;

-- An identity column (installs made from the earlier 0006 on PostgreSQL 17 or later) becomes
-- a plain column whose default is the sequence. audit.events is locked first, so that no
-- capture trigger can take an id meanwhile; dropping the identity drops its sequence, so the
-- position is carried over to a new one before.
DO $$
DECLARE
    position bigint;
    called   boolean;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_attribute AS a
               WHERE a.attrelid = 'audit.events'::regclass AND a.attname = 'id'
                 AND a.attidentity <> '') THEN
        LOCK TABLE audit.events IN ACCESS EXCLUSIVE MODE;
        SELECT s.last_value, s.is_called INTO position, called FROM audit.events_id_seq AS s;
        CREATE SEQUENCE audit.events_id_seq_portable AS bigint;
        PERFORM pg_catalog.setval('audit.events_id_seq_portable', position, called);
        ALTER TABLE audit.events ALTER COLUMN id DROP IDENTITY;
        ALTER SEQUENCE audit.events_id_seq_portable RENAME TO events_id_seq;
        ALTER TABLE audit.events
            ALTER COLUMN id SET DEFAULT pg_catalog.nextval('audit.events_id_seq'::regclass);
        ALTER SEQUENCE audit.events_id_seq OWNED BY audit.events.id;
    END IF;
END
$$;
