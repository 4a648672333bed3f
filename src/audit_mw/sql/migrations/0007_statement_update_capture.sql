-- audit_mw 0007: UPDATE captured once per statement, from its transition tables.
--
-- Until now UPDATE was captured by a row-level trigger: a trigger call, a search-path switch
-- and two small statements for every updated row (about 2.3x the time of a hand-written
-- audit INSERT on a 100k-row UPDATE). It also missed rows that an UPDATE moves from one
-- partition of a tracked partitioned table to another: PostgreSQL runs such a move as a
-- DELETE and an INSERT on the partitions, which fires no row-level UPDATE trigger, and no
-- statement-level INSERT or DELETE trigger either. The statement-level UPDATE trigger on the
-- tracked table sees every updated row, moved or not, in its OLD and NEW transition tables.
--
-- Pairing. PostgreSQL appends the old and the new version of each updated row to the two
-- transition tables together, one row at a time (AfterTriggerSaveEvent, and for a row moved
-- between partitions the same call made once the new version is in place), so the n-th row
-- of old_rows and the n-th row of new_rows are the same row. Pairing by position is exact
-- where pairing by key is not: a statement that swaps or shifts keys (SET id = id + 1) or
-- moves rows between partitions leaves two tables in which equal keys belong to different
-- rows. The tests pin this order on every supported version (tests/test_capture_update.py).
--
-- Also fixed here: capture_insert() and capture_delete() converted `to_jsonb(n)` and
-- `to_jsonb(o)` over a transition table aliased n or o, and a column of that name in the
-- tracked table took precedence over the alias (a table with a column `n` could not take an
-- INSERT). Whole-row references are now written `alias.*`, which no column name can shadow,
-- and `#variable_conflict use_variable` settles a column named like a variable of the
-- function (excluded, masked, ctx), which failed the write as an ambiguous reference: every
-- column reference in these bodies is qualified, so an unqualified name is the variable.
--
-- audit.capture_update() (row-level) stays: tables tracked before this version keep using it
-- until `audit-mw retrack` is run, and `audit-mw status` says so.

-- FULL JOIN: plpgsql keeps the plan of the pairing join for the session, made from the
-- transition tables of the statement it first ran for. After a few one-row UPDATEs an inner
-- join's plan is a nested loop, which paired a later 20k-row UPDATE in 374 s instead of
-- 0.3 s (quadratic). A full join can only be hashed or merged: linear whatever the cached
-- estimate. (Both tables always have the same number of rows; were it otherwise, a row
-- would still be written, with the missing image NULL, rather than dropped.)
CREATE FUNCTION audit.capture_update_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    ctx         audit.session_context := audit.read_context();
BEGIN
    -- Each image is converted to jsonb once: OFFSET 0 keeps the planner from copying
    -- to_jsonb() into every reference, the changed-fields sub-query included. A row whose
    -- captured columns did not change (an update of excluded columns only, or of nothing)
    -- writes no audit row.
    --
    -- One updated row (the common case in an application) needs no pairing: the two
    -- one-row tables are simply combined, which costs about 8 us of CPU less than numbering
    -- and joining them (65 against 73 us per audited single-row UPDATE, measured). The two
    -- statements differ only in their FROM clause.
    IF NOT EXISTS (SELECT FROM old_rows OFFSET 1) THEN
        INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                                  new_values, changed_fields, app_user_id, client_ip, request_id,
                                  user_agent, context_extra, context_issues, application_name,
                                  client_addr)
        SELECT 'data', 'UPDATE', TG_ARGV[3], TG_ARGV[4],
               CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN p.n ->> key_columns[1]
                    ELSE audit.record_key(p.n, key_columns) END,
               CASE WHEN pg_catalog.cardinality(masked) = 0 THEN p.o ELSE audit.mask(p.o, masked) END,
               CASE WHEN pg_catalog.cardinality(masked) = 0 THEN p.n ELSE audit.mask(p.n, masked) END,
               p.changed,
               ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
               NULLIF(pg_catalog.current_setting('application_name'), ''), pg_catalog.inet_client_addr()
        FROM (SELECT o.j AS o, n.j AS n,
                     ARRAY(SELECT e.key FROM pg_catalog.jsonb_each(n.j) AS e
                           WHERE e.value IS DISTINCT FROM o.j -> e.key ORDER BY e.key) AS changed
              FROM (SELECT pg_catalog.to_jsonb(r.*) - excluded AS j FROM old_rows AS r OFFSET 0) AS o
              CROSS JOIN (SELECT pg_catalog.to_jsonb(r.*) - excluded AS j
                          FROM new_rows AS r OFFSET 0) AS n
              OFFSET 0) AS p
        WHERE p.changed <> '{}';
    ELSE
        INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                                  new_values, changed_fields, app_user_id, client_ip, request_id,
                                  user_agent, context_extra, context_issues, application_name,
                                  client_addr)
        SELECT 'data', 'UPDATE', TG_ARGV[3], TG_ARGV[4],
               CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN p.n ->> key_columns[1]
                    ELSE audit.record_key(p.n, key_columns) END,
               CASE WHEN pg_catalog.cardinality(masked) = 0 THEN p.o ELSE audit.mask(p.o, masked) END,
               CASE WHEN pg_catalog.cardinality(masked) = 0 THEN p.n ELSE audit.mask(p.n, masked) END,
               p.changed,
               ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
               NULLIF(pg_catalog.current_setting('application_name'), ''), pg_catalog.inet_client_addr()
        FROM (SELECT o.j AS o, n.j AS n,
                     ARRAY(SELECT e.key FROM pg_catalog.jsonb_each(n.j) AS e
                           WHERE e.value IS DISTINCT FROM o.j -> e.key ORDER BY e.key) AS changed
              FROM (SELECT pg_catalog.row_number() OVER () AS pos,
                           pg_catalog.to_jsonb(r.*) - excluded AS j
                    FROM old_rows AS r OFFSET 0) AS o
              FULL JOIN (SELECT pg_catalog.row_number() OVER () AS pos,
                           pg_catalog.to_jsonb(r.*) - excluded AS j
                    FROM new_rows AS r OFFSET 0) AS n ON n.pos = o.pos
              OFFSET 0) AS p
        WHERE p.changed <> '{}' OR p.o IS NULL OR p.n IS NULL;
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION audit.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
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
    FROM (SELECT pg_catalog.to_jsonb(n.*) - excluded AS j FROM new_rows AS n OFFSET 0) AS r;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION audit.capture_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
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
    FROM (SELECT pg_catalog.to_jsonb(o.*) - excluded AS j FROM old_rows AS o OFFSET 0) AS r;
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION audit.capture_update_rows() FROM PUBLIC;
