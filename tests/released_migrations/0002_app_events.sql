-- audit_mw 0002: recording application events (auth, admin, access) through one function.
--
-- The application role never gets INSERT on audit.events: it calls audit.log_event(), which
-- validates and caps every value, takes the time from the database, and refuses the 'data'
-- kind (reserved for the capture triggers), so the application cannot backdate an event or
-- forge a row change. The event id comes from the client and is unique: a retried or
-- replayed write is stored once, and the call returns the row that was stored either way.

CREATE FUNCTION audit.log_event(
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
                          OR pg_catalog.pg_input_is_valid(p_client_ip, 'inet');
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

    INSERT INTO audit.events (event_id, kind, action, success, reason, app_user_id, client_ip,
                              request_id, user_agent, context_extra, context_issues,
                              resource_type, resource_id, metadata, application_name,
                              client_addr)
    VALUES (p_event_id, p_kind, p_action, p_success, pg_catalog.left(p_reason, 512),
            pg_catalog.left(p_app_user_id, 256),
            CASE WHEN ip_ok THEN p_client_ip::inet END,
            pg_catalog.left(p_request_id, 128), pg_catalog.left(p_user_agent, 512),
            CASE WHEN extra_ok THEN p_context_extra END,
            NULLIF(issues, '{}'::text[]),
            pg_catalog.left(p_resource_type, 64), pg_catalog.left(p_resource_id, 256),
            CASE WHEN meta_ok THEN p_metadata END,
            NULLIF(pg_catalog.current_setting('application_name'), ''),
            pg_catalog.inet_client_addr())
    ON CONFLICT (event_id) WHERE event_id IS NOT NULL DO NOTHING
    RETURNING audit.events.id, audit.events.occurred_at INTO stored_id, stored_at;

    IF stored_id IS NOT NULL THEN
        created := true;
        RETURN;
    END IF;
    -- Stored before (a retry or a replay): return that row, unless the id was reused for a
    -- different event, which is a bug in the caller and must not pass silently.
    SELECT e.id, e.occurred_at, e.kind, e.action INTO existing
    FROM audit.events AS e WHERE e.event_id = p_event_id;
    IF existing.kind IS DISTINCT FROM p_kind OR existing.action IS DISTINCT FROM p_action THEN
        RAISE EXCEPTION 'audit_mw: event_id % is already used by a different event', p_event_id
            USING ERRCODE = 'unique_violation';
    END IF;
    stored_id := existing.id;
    stored_at := existing.occurred_at;
    created := false;
END
$$;

COMMENT ON FUNCTION audit.log_event(uuid, text, text, boolean, text, text, text, text, text,
                                    jsonb, text, text, jsonb) IS
    'audit_mw: record an application event (kind auth, admin or access) at database time; '
    'idempotent on event_id';

REVOKE ALL ON FUNCTION audit.log_event(uuid, text, text, boolean, text, text, text, text, text,
                                       jsonb, text, text, jsonb) FROM PUBLIC;

-- audit_writer exists when the installing role may create roles (see schema.py); otherwise
-- the owner grants EXECUTE by hand to the application's role.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'audit_writer') THEN
        GRANT EXECUTE ON FUNCTION audit.log_event(uuid, text, text, boolean, text, text, text,
                                                  text, text, jsonb, text, text, jsonb)
            TO audit_writer;
    END IF;
END
$$;
