-- audit_mw 0006: audit.events partitioned by time; legal holds; retention checkpoints.
--
-- audit.events becomes a table partitioned by RANGE (occurred_at), one partition per UTC
-- month (audit.events_pYYYYMM) plus a DEFAULT partition, so that a business write never
-- fails for lack of a partition. Old data then leaves as whole partitions (DROP, not
-- DELETE), which is what makes years of rows cheap to keep and safe to drop (see
-- docs/scaling.md and docs/integrity.md, "Retention").
--
-- The columns keep their names, order and types (the integrity chain hashes every column),
-- ids are kept and the identity continues where it was. Identity columns on a partitioned
-- table need PostgreSQL 17.

DO $$
BEGIN
    IF pg_catalog.current_setting('server_version_num')::int < 170000 THEN
        RAISE EXCEPTION 'audit_mw: migration 0006 needs PostgreSQL 17 or newer '
            '(identity columns on a partitioned table); this server is %',
            pg_catalog.current_setting('server_version')
            USING ERRCODE = 'feature_not_supported';
    END IF;
END
$$;

-- The old table steps aside with its identity sequence; its indexes and constraint names
-- are freed for the new table.
ALTER TABLE audit.events RENAME TO events_unpartitioned;
ALTER SEQUENCE audit.events_id_seq RENAME TO events_unpartitioned_id_seq;
ALTER TABLE audit.events_unpartitioned RENAME CONSTRAINT events_pkey TO events_unpartitioned_pkey;
DROP INDEX audit.events_record_idx, audit.events_user_time_idx, audit.events_time_brin_idx,
    audit.events_event_id_key, audit.events_txid_id_idx, audit.events_request_idx;

CREATE TABLE audit.events (
    id                bigint GENERATED ALWAYS AS IDENTITY,
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
    event_id          uuid,
    success           boolean,
    reason            text,
    resource_type     text,
    resource_id       text,
    metadata          jsonb,
    -- A unique index on a partitioned table must hold the partition key.
    CONSTRAINT events_pkey PRIMARY KEY (id, occurred_at)
) PARTITION BY RANGE (occurred_at);

-- Continue the ids exactly where the old table left them.
SELECT pg_catalog.setval('audit.events_id_seq', s.last_value, s.is_called)
FROM audit.events_unpartitioned_id_seq AS s;

COMMENT ON TABLE audit.events IS
    'audit_mw: every captured row change and application event, append-only; '
    'partitioned by month of occurred_at (audit.events_pYYYYMM, audit.events_default).';
COMMENT ON COLUMN audit.events.record_id IS
    'primary key of the changed row: the value as text for one key column, '
    'a JSON array of the values in key order for a composite key, NULL without a key';
COMMENT ON COLUMN audit.events.event_id IS
    'client-generated id of an application event; unique through audit.event_ids, so a '
    'retried write is stored once';
COMMENT ON COLUMN audit.events.context_issues IS
    'malformed session context that was stored safely: user_id_truncated, client_ip_invalid, '
    'request_id_truncated, user_agent_truncated, extra_invalid';

-- Partitioned indexes: every partition gets its own copy (see docs/scaling.md).
CREATE INDEX events_record_idx ON audit.events (table_name, record_id, id);
CREATE INDEX events_user_time_idx ON audit.events (app_user_id, occurred_at);
CREATE INDEX events_time_brin_idx ON audit.events USING brin (occurred_at);
-- Not unique any more (uniqueness is global, in audit.event_ids); kept under its old name
-- for the lookups of one event by its event id.
CREATE INDEX events_event_id_key ON audit.events (event_id) WHERE event_id IS NOT NULL;
CREATE INDEX events_txid_id_idx ON audit.events (txid, id);
CREATE INDEX events_request_idx ON audit.events (request_id) WHERE request_id IS NOT NULL;

-- Append-only, loudly, as before. Statement-level triggers fire for the table a statement
-- names: these on the parent, and the same pair on every partition (audit.create_partition),
-- so that UPDATE, DELETE or TRUNCATE aimed at one partition is refused as well.
CREATE TRIGGER events_append_only
    BEFORE UPDATE OR DELETE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON audit.events
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_append_only;
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_no_truncate;

-- Guards for one partition (the parent's own are above).
CREATE FUNCTION audit.guard_partition(p_partition regclass) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', p_partition);
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change()', p_partition);
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER events_append_only',
                              p_partition);
    EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER events_no_truncate',
                              p_partition);
    EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', p_partition);
END
$$;

-- The partitions of audit.events with their bounds (NULL for MINVALUE/MAXVALUE and for the
-- default partition). pg_get_expr prints a bound under the session's TimeZone and DateStyle,
-- and the cast reads it back under the same settings: the same instant, whatever they are.
CREATE FUNCTION audit.event_partitions()
RETURNS TABLE (partition regclass, partition_name text, range_from timestamptz,
               range_to timestamptz, is_default boolean)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT c.oid::regclass, c.relname::text,
           (pg_catalog.regexp_match(b.bound, 'FROM \(''([^'']*)''\)'))[1]::timestamptz,
           (pg_catalog.regexp_match(b.bound, 'TO \(''([^'']*)''\)'))[1]::timestamptz,
           b.bound = 'DEFAULT'
    FROM pg_catalog.pg_inherits AS i
    JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_catalog.pg_get_expr(c.relpartbound, c.oid) AS bound) AS b
    WHERE i.inhparent = 'audit.events'::regclass
    ORDER BY 5, 3 NULLS FIRST, 2
$$;

-- One partition for [p_from, p_to): audit.events_pYYYYMM for a UTC calendar month, else
-- audit.events_pYYYYMMDD_YYYYMMDD. Refuses a range that rows in the default partition fall
-- into (they would have to move first; see docs/scaling.md).
CREATE FUNCTION audit.create_partition(p_from timestamptz, p_to timestamptz) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Calendar arithmetic in UTC, whatever the session's TimeZone.
    utc_from timestamp := p_from AT TIME ZONE 'UTC';
    utc_to   timestamp := p_to AT TIME ZONE 'UTC';
    name     text;
BEGIN
    IF p_from IS NULL OR p_to IS NULL OR p_to <= p_from THEN
        RAISE EXCEPTION 'audit_mw: a partition needs a range with from < to (got % to %)',
            p_from, p_to USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF utc_from = pg_catalog.date_trunc('month', utc_from)
       AND utc_to = utc_from + interval '1 month' THEN
        name := 'events_p' || pg_catalog.to_char(utc_from, 'YYYYMM');
    ELSE
        name := 'events_p' || pg_catalog.to_char(utc_from, 'YYYYMMDD') || '_'
                || pg_catalog.to_char(utc_to, 'YYYYMMDD');
    END IF;
    IF EXISTS (SELECT 1 FROM audit.events_default AS d
               WHERE d.occurred_at >= p_from AND d.occurred_at < p_to) THEN
        RAISE EXCEPTION 'audit_mw: rows for % to % are in the default partition; '
            'partition % cannot be created over them', p_from, p_to, name
            USING ERRCODE = 'object_not_in_prerequisite_state',
                  HINT = 'see docs/scaling.md, "Rows in the default partition"';
    END IF;
    EXECUTE pg_catalog.format(
        'CREATE TABLE audit.%I PARTITION OF audit.events FOR VALUES FROM (%L) TO (%L)',
        name, p_from, p_to);
    PERFORM audit.guard_partition(pg_catalog.format('audit.%I', name)::regclass);
    EXECUTE pg_catalog.format(
        'COMMENT ON TABLE audit.%I IS %L', name,
        'audit_mw: partition of audit.events; dropped only by retention (audit-mw retention)');
    RETURN name;
END
$$;

-- Monthly partitions from the month of p_now up to p_months_ahead months after it. Months
-- that exist are skipped; months that rows in the default partition already fall into are
-- reported ('rows_in_default'), not created; months that another partition overlaps are
-- reported ('overlaps'). Cheap when nothing is missing: one catalog lookup per month.
CREATE FUNCTION audit.ensure_partitions(
    p_months_ahead integer DEFAULT 3,
    p_now timestamptz DEFAULT pg_catalog.statement_timestamp()
)
RETURNS TABLE (partition_name text, outcome text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- Months of UTC, whatever the session's TimeZone.
    month      timestamp := pg_catalog.date_trunc('month', p_now AT TIME ZONE 'UTC');
    last       timestamp;
    month_from timestamptz;
    month_to   timestamptz;
BEGIN
    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN
        RAISE EXCEPTION 'audit_mw: months ahead must be between 0 and 120 (got %)',
            p_months_ahead USING ERRCODE = 'invalid_parameter_value';
    END IF;
    last := month + pg_catalog.make_interval(months => p_months_ahead);
    WHILE month <= last LOOP
        partition_name := 'events_p' || pg_catalog.to_char(month, 'YYYYMM');
        month_from := month AT TIME ZONE 'UTC';
        month_to := (month + interval '1 month') AT TIME ZONE 'UTC';
        IF pg_catalog.to_regclass(pg_catalog.format('audit.%I', partition_name)) IS NULL THEN
            IF EXISTS (SELECT 1 FROM audit.events_default AS d
                       WHERE d.occurred_at >= month_from AND d.occurred_at < month_to) THEN
                outcome := 'rows_in_default';
            ELSE
                BEGIN
                    PERFORM audit.create_partition(month_from, month_to);
                    outcome := 'created';
                EXCEPTION WHEN invalid_object_definition THEN
                    outcome := 'overlaps';
                END;
            END IF;
            RETURN NEXT;
        END IF;
        month := month + interval '1 month';
    END LOOP;
END
$$;

-- The catch-all: rows outside every created range land here, never in an error.
CREATE TABLE audit.events_default PARTITION OF audit.events DEFAULT;
SELECT audit.guard_partition('audit.events_default'::regclass);
COMMENT ON TABLE audit.events_default IS
    'audit_mw: rows outside every monthly partition; never dropped by retention';

-- Partitions for every month the existing rows fall into, then the months ahead.
SELECT audit.create_partition(m AT TIME ZONE 'UTC', (m + interval '1 month') AT TIME ZONE 'UTC')
FROM pg_catalog.generate_series(
         (SELECT pg_catalog.date_trunc('month', pg_catalog.min(occurred_at) AT TIME ZONE 'UTC')
          FROM audit.events_unpartitioned WHERE pg_catalog.isfinite(occurred_at)),
         pg_catalog.date_trunc('month', pg_catalog.statement_timestamp() AT TIME ZONE 'UTC')
             - interval '1 month',
         interval '1 month') AS m
WHERE EXISTS (SELECT 1 FROM audit.events_unpartitioned AS o
              WHERE o.occurred_at >= m AT TIME ZONE 'UTC'
                AND o.occurred_at < (m + interval '1 month') AT TIME ZONE 'UTC');
SELECT pg_catalog.count(*) FROM audit.ensure_partitions(3);

INSERT INTO audit.events OVERRIDING SYSTEM VALUE
SELECT * FROM audit.events_unpartitioned ORDER BY id;

DROP TABLE audit.events_unpartitioned;

-- Idempotency of application events, across every partition (and across retention: the
-- id of a dropped event stays taken). Written by audit.log_event() only.
CREATE TABLE audit.event_ids (
    event_id     uuid PRIMARY KEY,
    stored_id    bigint NOT NULL,
    stored_at    timestamptz NOT NULL,
    kind         text NOT NULL,
    action       text NOT NULL
);
COMMENT ON TABLE audit.event_ids IS
    'audit_mw: the event id of every application event, so a retried write is stored once; '
    'append-only.';
INSERT INTO audit.event_ids (event_id, stored_id, stored_at, kind, action)
SELECT DISTINCT ON (e.event_id) e.event_id, e.id, e.occurred_at, e.kind, e.action
FROM audit.events AS e WHERE e.event_id IS NOT NULL
ORDER BY e.event_id, e.id;

-- Every row with an event id claims it in audit.event_ids, whoever writes it (even the
-- owner): a second row with the same id is a unique violation, as with the old unique index.
-- audit.log_event() claims the id first and passes here with the same row id.
CREATE FUNCTION audit.claim_event_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO audit.event_ids (event_id, stored_id, stored_at, kind, action)
    VALUES (NEW.event_id, NEW.id, NEW.occurred_at, NEW.kind, NEW.action)
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND AND NOT EXISTS (SELECT 1 FROM audit.event_ids AS i
                                 WHERE i.event_id = NEW.event_id AND i.stored_id = NEW.id) THEN
        RAISE EXCEPTION 'audit_mw: event_id % is already stored', NEW.event_id
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION audit.claim_event_id() FROM PUBLIC;

-- A row trigger on the parent is cloned to every partition, present and future.
CREATE TRIGGER events_event_id_unique
    BEFORE INSERT ON audit.events
    FOR EACH ROW WHEN (NEW.event_id IS NOT NULL) EXECUTE FUNCTION audit.claim_event_id();
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_event_id_unique;

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
        OVERRIDING SYSTEM VALUE
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

-- Legal holds: data they cover is never dropped by retention. A hold is never deleted or
-- edited; releasing it adds a row to audit.legal_hold_releases.
CREATE TABLE audit.legal_holds (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('time_range', 'record', 'user')),
    schema_name  text,
    table_name   text,
    record_id    text,
    app_user_id  text,
    range_from   timestamptz,
    range_to     timestamptz,
    reason       text NOT NULL CHECK (pg_catalog.length(reason) BETWEEN 1 AND 512),
    created_by   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CHECK (kind <> 'time_range' OR range_from IS NOT NULL),
    CHECK (kind <> 'record' OR (table_name IS NOT NULL AND record_id IS NOT NULL)),
    CHECK (kind <> 'user' OR app_user_id IS NOT NULL),
    CHECK (range_from IS NULL OR range_to IS NULL OR range_to > range_from)
);
COMMENT ON TABLE audit.legal_holds IS
    'audit_mw: legal holds; partitions holding covered data are never dropped; append-only';

CREATE TABLE audit.legal_hold_releases (
    hold_id      bigint PRIMARY KEY REFERENCES audit.legal_holds (id),
    reason       text NOT NULL CHECK (pg_catalog.length(reason) BETWEEN 1 AND 512),
    released_by  text NOT NULL,
    released_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE audit.legal_hold_releases IS
    'audit_mw: legal holds that were released, when and by whom; append-only';

-- The legal holds in force that cover data of one partition.
CREATE FUNCTION audit.partition_holds(p_partition regclass) RETURNS SETOF bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part  record;
    hold  record;
    found_rows boolean;
BEGIN
    SELECT * INTO part FROM audit.event_partitions() AS p WHERE p.partition = p_partition;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'audit_mw: % is not a partition of audit.events', p_partition
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR hold IN
        SELECT h.* FROM audit.legal_holds AS h
        WHERE NOT EXISTS (SELECT 1 FROM audit.legal_hold_releases AS r WHERE r.hold_id = h.id)
          AND (h.range_from IS NULL OR part.range_to IS NULL OR h.range_from < part.range_to)
          AND (h.range_to IS NULL OR part.range_from IS NULL OR h.range_to > part.range_from)
        ORDER BY h.id
    LOOP
        IF hold.kind = 'time_range' THEN
            RETURN NEXT hold.id;
            CONTINUE;
        END IF;
        EXECUTE pg_catalog.format(
            'SELECT EXISTS (SELECT 1 FROM %s AS e WHERE '
            '(($1 = ''record'' AND e.table_name = $2 AND e.record_id = $3 '
            '  AND ($4::text IS NULL OR e.schema_name = $4)) '
            ' OR ($1 = ''user'' AND e.app_user_id = $5)) '
            'AND ($6::timestamptz IS NULL OR e.occurred_at >= $6) '
            'AND ($7::timestamptz IS NULL OR e.occurred_at < $7))', p_partition)
        INTO found_rows
        USING hold.kind, hold.table_name, hold.record_id, hold.schema_name, hold.app_user_id,
              hold.range_from, hold.range_to;
        IF found_rows THEN
            RETURN NEXT hold.id;
        END IF;
    END LOOP;
END
$$;

-- What retention dropped: one row per dropped partition, authenticated like the seal
-- checkpoints (the key lives in the environment; see audit_mw.integrity.retention). The
-- verifier accepts a sealed event as gone exactly when its chain position is in the
-- positions of such a row; copies go to the checkpoint file's ".retention" sibling.
CREATE TABLE audit.retention_checkpoints (
    seq             bigint PRIMARY KEY CHECK (seq > 0),
    chain_id        uuid,
    partition_name  text NOT NULL,
    range_from      timestamptz,
    range_to        timestamptz NOT NULL,
    row_count       bigint NOT NULL CHECK (row_count >= 0),
    positions       int8multirange NOT NULL,
    position        bigint NOT NULL CHECK (position >= 0),
    head_hash       bytea NOT NULL CHECK (pg_catalog.octet_length(head_hash) = 32),
    last_event_id   bigint,
    policy          text NOT NULL,
    created_at      timestamptz NOT NULL,
    key_id          text NOT NULL,
    mac             bytea NOT NULL,
    sig_key_id      text,
    signature       bytea
);
COMMENT ON TABLE audit.retention_checkpoints IS
    'audit_mw: one authenticated record per partition dropped by retention (its chain '
    'positions, last position and entry hash there); append-only.';

-- Drops one partition for retention, after the caller recorded its retention checkpoint in
-- this transaction. Re-checks what must hold, whoever calls: a partition (not the default),
-- every row sealed, no legal hold, and a retention checkpoint that names it with its row
-- count and exactly the chain positions of its rows.
CREATE FUNCTION audit.drop_partition(p_partition regclass, p_retention_seq bigint)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part      record;
    cp        record;
    n_rows    bigint;
    unsealed  bigint;
    positions int8multirange;
    hold      bigint;
BEGIN
    SELECT * INTO part FROM audit.event_partitions() AS p WHERE p.partition = p_partition;
    IF NOT FOUND OR part.is_default THEN
        RAISE EXCEPTION 'audit_mw: % is not a droppable partition of audit.events', p_partition
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO cp FROM audit.retention_checkpoints AS r WHERE r.seq = p_retention_seq;
    IF NOT FOUND OR cp.partition_name <> part.partition_name
       OR cp.range_to IS DISTINCT FROM part.range_to THEN
        RAISE EXCEPTION 'audit_mw: retention checkpoint % does not name partition %',
            p_retention_seq, part.partition_name USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- No row may be written into the partition while it is checked and dropped.
    EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', p_partition);
    EXECUTE pg_catalog.format(
        'SELECT pg_catalog.count(*), pg_catalog.count(*) FILTER (WHERE NOT EXISTS '
        '(SELECT 1 FROM audit.chain AS c WHERE c.event_id = e.id)) FROM %s AS e', p_partition)
        INTO n_rows, unsealed;
    IF unsealed > 0 THEN
        RAISE EXCEPTION 'audit_mw: partition % holds % unsealed events', part.partition_name,
            unsealed USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF n_rows <> cp.row_count THEN
        RAISE EXCEPTION 'audit_mw: partition % holds % events, its retention checkpoint %',
            part.partition_name, n_rows, cp.row_count
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE pg_catalog.format(
        'SELECT COALESCE(pg_catalog.range_agg(pg_catalog.int8range(c.position, c.position, '
        '''[]'')), ''{}''::int8multirange) FROM %s AS e JOIN audit.chain AS c '
        'ON c.event_id = e.id', p_partition) INTO positions;
    IF positions <> cp.positions THEN
        RAISE EXCEPTION 'audit_mw: the chain positions of partition % differ from its '
            'retention checkpoint %', part.partition_name, p_retention_seq
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    SELECT h INTO hold FROM audit.partition_holds(p_partition) AS h LIMIT 1;
    IF hold IS NOT NULL THEN
        RAISE EXCEPTION 'audit_mw: partition % is under legal hold %', part.partition_name, hold
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    EXECUTE pg_catalog.format('DROP TABLE %s', p_partition);
    RETURN n_rows;
END
$$;

-- Append-only guards on the new tables.
CREATE TRIGGER event_ids_append_only BEFORE UPDATE OR DELETE ON audit.event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER event_ids_no_truncate BEFORE TRUNCATE ON audit.event_ids
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER legal_holds_append_only BEFORE UPDATE OR DELETE ON audit.legal_holds
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER legal_holds_no_truncate BEFORE TRUNCATE ON audit.legal_holds
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER legal_hold_releases_append_only BEFORE UPDATE OR DELETE ON audit.legal_hold_releases
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER legal_hold_releases_no_truncate BEFORE TRUNCATE ON audit.legal_hold_releases
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER retention_checkpoints_append_only BEFORE UPDATE OR DELETE
    ON audit.retention_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER retention_checkpoints_no_truncate BEFORE TRUNCATE ON audit.retention_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.event_ids ENABLE ALWAYS TRIGGER event_ids_append_only;
ALTER TABLE audit.event_ids ENABLE ALWAYS TRIGGER event_ids_no_truncate;
ALTER TABLE audit.legal_holds ENABLE ALWAYS TRIGGER legal_holds_append_only;
ALTER TABLE audit.legal_holds ENABLE ALWAYS TRIGGER legal_holds_no_truncate;
ALTER TABLE audit.legal_hold_releases ENABLE ALWAYS TRIGGER legal_hold_releases_append_only;
ALTER TABLE audit.legal_hold_releases ENABLE ALWAYS TRIGGER legal_hold_releases_no_truncate;
ALTER TABLE audit.retention_checkpoints ENABLE ALWAYS TRIGGER retention_checkpoints_append_only;
ALTER TABLE audit.retention_checkpoints ENABLE ALWAYS TRIGGER retention_checkpoints_no_truncate;

-- Partition maintenance and retention belong to the owner (and the installer acting as it).
REVOKE ALL ON FUNCTION audit.guard_partition(regclass), audit.event_partitions(),
    audit.create_partition(timestamptz, timestamptz), audit.ensure_partitions(integer, timestamptz),
    audit.partition_holds(regclass), audit.drop_partition(regclass, bigint) FROM PUBLIC;
REVOKE ALL ON audit.events, audit.event_ids, audit.legal_holds, audit.legal_hold_releases,
    audit.retention_checkpoints FROM PUBLIC;
