-- audit_mw 0009: the trail holds against the roles it audits.
--
-- The role that owns a tracked table (often the application's or the migrations' role) is
-- an adversary. Until now its own code could run inside the capture functions with the
-- rights of the schema owner: to_jsonb() calls a cast to json that the owner of a type
-- (an enum, a range) may create, and the capture functions ran as audit_owner. This
-- migration closes that class (see docs/threat-model.md, "Where the boundary is"):
--
-- 1. Capture runs as audit_capture (install() moves the capture functions to it): a NOLOGIN
--    role that may only INSERT into audit.events; it owns no table, may CREATE nowhere and
--    cannot touch a guard.
-- 2. Before any row is converted, capture refuses the write when a type of the table (its
--    columns, their element, base, attribute, range types, recursively) has a cast to json
--    or jsonb whose function a non-superuser owns: the only user-definable code that
--    to_jsonb() calls. The check costs one index probe of pg_cast per statement while no
--    such cast exists in the database. track refuses such tables, and status reports them.
-- 3. Excluded and masked columns follow the column: the triggers carry their attribute
--    numbers too, and a renamed column stays out of the trail.
-- 4. audit.events records server truth: a row whose time, transaction, database role or
--    client address is not the server's, or a 'data' row not written by capture (or an
--    application event written by capture), is refused for everyone but a superuser.
-- 5. The sealer's mutual exclusion is a lease in audit.seal_lease, which only roles that may
--    seal can take; an advisory lock, which any role can hold, no longer stops sealing.
-- 6. Captured rows carry the name of the table the server fired the trigger on (or of the
--    partitioned table above it), never one the trigger's arguments alone assert: a role that
--    may create capture triggers chooses their arguments. A renamed table is recorded under
--    its new name.

-- The types a relation's rows are made of, with the columns they come from: each column's
-- type, and recursively the element type of an array, the base type of a domain, the
-- attribute types of a composite, the subtype of a range and the range of a multirange.
CREATE FUNCTION audit.column_type_tree(p_relation regclass)
RETURNS TABLE (column_name text, type_oid oid)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    WITH RECURSIVE tree(column_name, type_oid) AS (
        SELECT a.attname::text, a.atttypid
        FROM pg_catalog.pg_attribute AS a
        WHERE a.attrelid = p_relation AND a.attnum > 0 AND NOT a.attisdropped
        UNION
        SELECT t.column_name, x.child
        FROM tree AS t
        JOIN pg_catalog.pg_type AS ty ON ty.oid = t.type_oid
        CROSS JOIN LATERAL (
            SELECT ty.typelem WHERE ty.typelem <> 0
            UNION ALL SELECT ty.typbasetype WHERE ty.typtype = 'd'
            UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute AS a
                      WHERE ty.typtype = 'c' AND a.attrelid = ty.typrelid AND a.attnum > 0
                        AND NOT a.attisdropped
            UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range AS r WHERE r.rngtypid = ty.oid
            UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range AS r
                      WHERE r.rngmultitypid = ty.oid
        ) AS x(child)
    )
    SELECT t.column_name, t.type_oid FROM tree AS t
$$;

-- Casts that to_jsonb() may call on a relation's values and whose code a non-superuser
-- wrote: a cast to json or jsonb from a type in the relation's type tree, by a function not
-- owned by a superuser. (PostgreSQL looks such a cast up for a type created after initdb;
-- a cast from a built-in type cannot be created by a non-superuser.)
CREATE FUNCTION audit.unsafe_casts(p_relation regclass)
RETURNS TABLE (column_name text, type_name text, cast_function text, function_owner text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT DISTINCT t.column_name, t.type_oid::regtype::text, c.castfunc::regprocedure::text,
           r.rolname::text
    FROM audit.column_type_tree(p_relation) AS t
    JOIN pg_catalog.pg_cast AS c
      ON c.castsource = t.type_oid
     AND c.casttarget IN ('pg_catalog.json'::pg_catalog.regtype, 'pg_catalog.jsonb'::pg_catalog.regtype)
    JOIN pg_catalog.pg_proc AS p ON p.oid = c.castfunc
    JOIN pg_catalog.pg_roles AS r ON r.oid = p.proowner
    WHERE NOT r.rolsuper
    ORDER BY 1, 2, 3
$$;

-- Called by capture before any value is converted, when such a cast exists somewhere in the
-- database: refuses the business write if one applies to this table. Loud, not silent: the
-- alternative would be to run the audited role's code with the auditor's rights.
CREATE FUNCTION audit.refuse_unsafe_casts(p_relation regclass) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    hit record;
BEGIN
    SELECT * INTO hit FROM audit.unsafe_casts(p_relation) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'audit_mw: capture of % refused: column % has type % with a cast to '
            'json defined by role % (%), which capture would have to run',
            p_relation, hit.column_name, hit.type_name, hit.function_owner, hit.cast_function
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'drop the cast (DROP CAST); audit_mw runs no code of the audited '
                         'roles; see docs/threat-model.md';
    END IF;
END
$$;

-- Values jsonb cannot hold. PostgreSQL accepts a json value that jsonb refuses (the escape
-- \u0000, a lone surrogate such as \ud800); converting the row would fail the business write.
-- For a table with a json column somewhere in its types (track passes 'json' as TG_ARGV[7]),
-- each row is converted through audit.row_image: as usual when it can be; else from its json
-- text, in which every such escape is itself escaped (\u0000 is stored as the six characters
-- \u0000, exactly what was written), with "audit_mw_escaped": true added to the image as the
-- flag a reader looks for. Excluded columns are removed before the image is stored, and
-- leave no flag. Tables
-- without json columns keep the inline conversion. (The row arrives as an anonymous record
-- from a transition table, so it is read as a whole, through its json text.)
CREATE FUNCTION audit.row_image(p_row anyelement, p_excluded text[]) RETURNS jsonb
LANGUAGE plpgsql STABLE PARALLEL SAFE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    image jsonb;
BEGIN
    RETURN pg_catalog.to_jsonb(p_row) - p_excluded;
EXCEPTION WHEN untranslatable_character OR invalid_text_representation THEN
    -- \u escapes of NUL and of surrogates, preceded by an even number of backslashes (an
    -- odd number would make the backslash itself escaped text).
    image := pg_catalog.regexp_replace(pg_catalog.to_json(p_row)::text,
                 '(?<!\\)((?:\\\\)*)\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})',
                 '\1\\\\u\2', 'g')::jsonb - p_excluded;
    -- Flagged when what is kept holds escaped text (not when only an excluded column did,
    -- which must leave no trace).
    IF pg_catalog.strpos(image::text, '\\u') > 0 THEN
        image := image || '{"audit_mw_escaped": true}'::jsonb;
    END IF;
    RETURN image;
END
$$;

-- The table a capture trigger's rows are recorded under, read from the catalog: the
-- partitioned table above the trigger's table (or that table itself) that the trigger's
-- arguments name (track names the tracked table in the triggers of its partitions), or else
-- the top of its partition tree, which is the table itself when it is not a partition (the
-- table, or the one above it, was renamed since track). Capture calls it only when the
-- arguments do not name the trigger's own table.
CREATE FUNCTION audit.recorded_table(p_relid oid, p_schema text, p_table text,
                                     OUT schema_name text, OUT table_name text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT n.nspname::text, c.relname::text
    FROM pg_catalog.pg_class AS c
    JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
    WHERE c.oid = COALESCE(
        (SELECT a.relid
         FROM pg_catalog.pg_partition_ancestors(p_relid) AS a
         JOIN pg_catalog.pg_class AS ac ON ac.oid = a.relid
         JOIN pg_catalog.pg_namespace AS an ON an.oid = ac.relnamespace
         WHERE an.nspname = p_schema AND ac.relname = p_table
         LIMIT 1),
        pg_catalog.pg_partition_root(p_relid)::oid,
        p_relid)
$$;

-- The capture functions, again, with two additions at the start of each (the rest is as in
-- 0007): the cast check above, and excluded and masked columns also by attribute number
-- (TG_ARGV[5], TG_ARGV[6], written by track since this version), so that a renamed column
-- stays out; and rows of tables with json columns converted through audit.row_image
-- (TG_ARGV[7] = 'json'). Names and numbers both count: a new column that takes an excluded column's name
-- is excluded too. Triggers created before this version pass five arguments and exclude by
-- name only; `audit-mw status` names them for `audit-mw retrack`. The table's name in each
-- row is the server's (audit.recorded_table), not the arguments' (TG_ARGV[3], TG_ARGV[4]).
CREATE OR REPLACE FUNCTION audit.capture_insert() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    json_rows   boolean := TG_NARGS > 7 AND TG_ARGV[7] = 'json';
    ctx         audit.session_context := audit.read_context();
    rec_schema  text := TG_TABLE_SCHEMA;
    rec_table   text := TG_TABLE_NAME;
BEGIN
    IF TG_TABLE_NAME <> TG_ARGV[4] OR TG_TABLE_SCHEMA <> TG_ARGV[3] THEN
        SELECT t.schema_name, t.table_name INTO rec_schema, rec_table
        FROM audit.recorded_table(TG_RELID, TG_ARGV[3], TG_ARGV[4]) AS t;
    END IF;
    -- 114 json, 3802 jsonb; 16384 is FirstNormalObjectId (types created after initdb).
    IF EXISTS (SELECT FROM pg_catalog.pg_cast AS c
               JOIN pg_catalog.pg_proc AS p ON p.oid = c.castfunc
               JOIN pg_catalog.pg_roles AS o ON o.oid = p.proowner
               WHERE c.castsource >= 16384 AND c.casttarget IN (114, 3802) AND NOT o.rolsuper) THEN
        PERFORM audit.refuse_unsafe_casts(TG_RELID);
    END IF;
    IF TG_NARGS > 6 THEN
        IF TG_ARGV[5] <> '{}' THEN
            excluded := excluded || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                          WHERE a.attrelid = TG_RELID
                                            AND a.attnum = ANY (TG_ARGV[5]::int2[]));
        END IF;
        IF TG_ARGV[6] <> '{}' THEN
            masked := masked || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                      WHERE a.attrelid = TG_RELID
                                        AND a.attnum = ANY (TG_ARGV[6]::int2[]));
        END IF;
    END IF;
    INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, new_values,
                              app_user_id, client_ip, request_id, user_agent, context_extra,
                              context_issues, application_name, client_addr)
    SELECT 'data', 'INSERT', rec_schema, rec_table,
           CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN r.j ->> key_columns[1]
                ELSE audit.record_key(r.j, key_columns) END,
           CASE WHEN pg_catalog.cardinality(masked) = 0 THEN r.j ELSE audit.mask(r.j, masked) END,
           ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
           NULLIF(pg_catalog.current_setting('application_name'), ''), pg_catalog.inet_client_addr()
    FROM (SELECT CASE WHEN json_rows THEN audit.row_image(n.*, excluded)
                      ELSE pg_catalog.to_jsonb(n.*) - excluded END AS j FROM new_rows AS n OFFSET 0) AS r;
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
    json_rows   boolean := TG_NARGS > 7 AND TG_ARGV[7] = 'json';
    ctx         audit.session_context := audit.read_context();
    rec_schema  text := TG_TABLE_SCHEMA;
    rec_table   text := TG_TABLE_NAME;
BEGIN
    IF TG_TABLE_NAME <> TG_ARGV[4] OR TG_TABLE_SCHEMA <> TG_ARGV[3] THEN
        SELECT t.schema_name, t.table_name INTO rec_schema, rec_table
        FROM audit.recorded_table(TG_RELID, TG_ARGV[3], TG_ARGV[4]) AS t;
    END IF;
    -- 114 json, 3802 jsonb; 16384 is FirstNormalObjectId (types created after initdb).
    IF EXISTS (SELECT FROM pg_catalog.pg_cast AS c
               JOIN pg_catalog.pg_proc AS p ON p.oid = c.castfunc
               JOIN pg_catalog.pg_roles AS o ON o.oid = p.proowner
               WHERE c.castsource >= 16384 AND c.casttarget IN (114, 3802) AND NOT o.rolsuper) THEN
        PERFORM audit.refuse_unsafe_casts(TG_RELID);
    END IF;
    IF TG_NARGS > 6 THEN
        IF TG_ARGV[5] <> '{}' THEN
            excluded := excluded || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                          WHERE a.attrelid = TG_RELID
                                            AND a.attnum = ANY (TG_ARGV[5]::int2[]));
        END IF;
        IF TG_ARGV[6] <> '{}' THEN
            masked := masked || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                      WHERE a.attrelid = TG_RELID
                                        AND a.attnum = ANY (TG_ARGV[6]::int2[]));
        END IF;
    END IF;
    INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                              app_user_id, client_ip, request_id, user_agent, context_extra,
                              context_issues, application_name, client_addr)
    SELECT 'data', 'DELETE', rec_schema, rec_table,
           CASE WHEN pg_catalog.cardinality(key_columns) = 1 THEN r.j ->> key_columns[1]
                ELSE audit.record_key(r.j, key_columns) END,
           CASE WHEN pg_catalog.cardinality(masked) = 0 THEN r.j ELSE audit.mask(r.j, masked) END,
           ctx.user_id, ctx.client_ip, ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
           NULLIF(pg_catalog.current_setting('application_name'), ''), pg_catalog.inet_client_addr()
    FROM (SELECT CASE WHEN json_rows THEN audit.row_image(o.*, excluded)
                      ELSE pg_catalog.to_jsonb(o.*) - excluded END AS j FROM old_rows AS o OFFSET 0) AS r;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION audit.capture_update_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_variable
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    json_rows   boolean := TG_NARGS > 7 AND TG_ARGV[7] = 'json';
    ctx         audit.session_context := audit.read_context();
    rec_schema  text := TG_TABLE_SCHEMA;
    rec_table   text := TG_TABLE_NAME;
BEGIN
    IF TG_TABLE_NAME <> TG_ARGV[4] OR TG_TABLE_SCHEMA <> TG_ARGV[3] THEN
        SELECT t.schema_name, t.table_name INTO rec_schema, rec_table
        FROM audit.recorded_table(TG_RELID, TG_ARGV[3], TG_ARGV[4]) AS t;
    END IF;
    -- 114 json, 3802 jsonb; 16384 is FirstNormalObjectId (types created after initdb).
    IF EXISTS (SELECT FROM pg_catalog.pg_cast AS c
               JOIN pg_catalog.pg_proc AS p ON p.oid = c.castfunc
               JOIN pg_catalog.pg_roles AS o ON o.oid = p.proowner
               WHERE c.castsource >= 16384 AND c.casttarget IN (114, 3802) AND NOT o.rolsuper) THEN
        PERFORM audit.refuse_unsafe_casts(TG_RELID);
    END IF;
    IF TG_NARGS > 6 THEN
        IF TG_ARGV[5] <> '{}' THEN
            excluded := excluded || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                          WHERE a.attrelid = TG_RELID
                                            AND a.attnum = ANY (TG_ARGV[5]::int2[]));
        END IF;
        IF TG_ARGV[6] <> '{}' THEN
            masked := masked || ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute AS a
                                      WHERE a.attrelid = TG_RELID
                                        AND a.attnum = ANY (TG_ARGV[6]::int2[]));
        END IF;
    END IF;
    -- Pairing and the one-row case: see migration 0007.
    IF NOT EXISTS (SELECT FROM old_rows OFFSET 1) THEN
        INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                                  new_values, changed_fields, app_user_id, client_ip, request_id,
                                  user_agent, context_extra, context_issues, application_name,
                                  client_addr)
        SELECT 'data', 'UPDATE', rec_schema, rec_table,
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
              FROM (SELECT CASE WHEN json_rows THEN audit.row_image(r.*, excluded)
                           ELSE pg_catalog.to_jsonb(r.*) - excluded END AS j
                    FROM old_rows AS r OFFSET 0) AS o
              CROSS JOIN (SELECT CASE WHEN json_rows THEN audit.row_image(r.*, excluded)
                                 ELSE pg_catalog.to_jsonb(r.*) - excluded END AS j
                          FROM new_rows AS r OFFSET 0) AS n
              OFFSET 0) AS p
        WHERE p.changed <> '{}';
    ELSE
        INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                                  new_values, changed_fields, app_user_id, client_ip, request_id,
                                  user_agent, context_extra, context_issues, application_name,
                                  client_addr)
        SELECT 'data', 'UPDATE', rec_schema, rec_table,
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
                           CASE WHEN json_rows THEN audit.row_image(r.*, excluded)
                                ELSE pg_catalog.to_jsonb(r.*) - excluded END AS j
                    FROM old_rows AS r OFFSET 0) AS o
              FULL JOIN (SELECT pg_catalog.row_number() OVER () AS pos,
                           CASE WHEN json_rows THEN audit.row_image(r.*, excluded)
                                ELSE pg_catalog.to_jsonb(r.*) - excluded END AS j
                    FROM new_rows AS r OFFSET 0) AS n ON n.pos = o.pos
              OFFSET 0) AS p
        WHERE p.changed <> '{}' OR p.o IS NULL OR p.n IS NULL;
    END IF;
    RETURN NULL;
END
$$;

-- The row-level UPDATE capture of tables tracked before 0007 (until they are retracked)
-- gets the cast check too: it converts rows as well.
CREATE OR REPLACE FUNCTION audit.capture_update() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    key_columns text[] := TG_ARGV[0]::text[];
    excluded    text[] := TG_ARGV[1]::text[];
    masked      text[] := TG_ARGV[2]::text[];
    old_image   jsonb;
    new_image   jsonb;
    ctx         audit.session_context := audit.read_context();
    changed     text[];
    rec_schema  text := TG_TABLE_SCHEMA;
    rec_table   text := TG_TABLE_NAME;
BEGIN
    IF TG_TABLE_NAME <> TG_ARGV[4] OR TG_TABLE_SCHEMA <> TG_ARGV[3] THEN
        SELECT t.schema_name, t.table_name INTO rec_schema, rec_table
        FROM audit.recorded_table(TG_RELID, TG_ARGV[3], TG_ARGV[4]) AS t;
    END IF;
    IF EXISTS (SELECT FROM pg_catalog.pg_cast AS c
               JOIN pg_catalog.pg_proc AS p ON p.oid = c.castfunc
               JOIN pg_catalog.pg_roles AS o ON o.oid = p.proowner
               WHERE c.castsource >= 16384 AND c.casttarget IN (114, 3802) AND NOT o.rolsuper) THEN
        PERFORM audit.refuse_unsafe_casts(TG_RELID);
    END IF;
    old_image := pg_catalog.to_jsonb(OLD) - excluded;
    new_image := pg_catalog.to_jsonb(NEW) - excluded;
    changed := ARRAY(SELECT e.key FROM pg_catalog.jsonb_each(new_image) AS e
                     WHERE e.value IS DISTINCT FROM old_image -> e.key ORDER BY e.key);
    IF changed = '{}' THEN
        RETURN NULL;
    END IF;
    INSERT INTO audit.events (kind, action, schema_name, table_name, record_id, old_values,
                              new_values, changed_fields, app_user_id, client_ip, request_id,
                              user_agent, context_extra, context_issues, application_name,
                              client_addr)
    VALUES ('data', 'UPDATE', rec_schema, rec_table,
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

CREATE OR REPLACE FUNCTION audit.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    ctx        audit.session_context := audit.read_context();
    rec_schema text := TG_TABLE_SCHEMA;
    rec_table  text := TG_TABLE_NAME;
BEGIN
    IF TG_TABLE_NAME <> TG_ARGV[4] OR TG_TABLE_SCHEMA <> TG_ARGV[3] THEN
        SELECT t.schema_name, t.table_name INTO rec_schema, rec_table
        FROM audit.recorded_table(TG_RELID, TG_ARGV[3], TG_ARGV[4]) AS t;
    END IF;
    INSERT INTO audit.events (kind, action, schema_name, table_name, app_user_id, client_ip,
                              request_id, user_agent, context_extra, context_issues,
                              application_name, client_addr)
    VALUES ('data', 'TRUNCATE', rec_schema, rec_table, ctx.user_id, ctx.client_ip,
            ctx.request_id, ctx.user_agent, ctx.extra, ctx.issues,
            NULLIF(pg_catalog.current_setting('application_name'), ''),
            pg_catalog.inet_client_addr());
    RETURN NULL;
END
$$;

REVOKE ALL ON FUNCTION audit.capture_insert(), audit.capture_delete(), audit.capture_update(),
    audit.capture_update_rows(), audit.capture_truncate() FROM PUBLIC;

-- Where a tracked table is now (a renamed table keeps its oid; status and retrack follow it).
ALTER TABLE audit.tracked_tables ADD COLUMN relid oid;
UPDATE audit.tracked_tables AS t
SET relid = pg_catalog.to_regclass(pg_catalog.quote_ident(t.schema_name) || '.'
                                   || pg_catalog.quote_ident(t.table_name));

-- Server truth. Whoever inserts into audit.events (capture, audit.log_event, the owner by
-- hand), the time, transaction, database role and client address must be the server's, a
-- 'data' row must come from capture and capture may write nothing else. The WHEN clause is
-- evaluated without calling any function of ours, so the rows that pass cost next to
-- nothing; a row that fails it is refused. A superuser's session (is_superuser, which SET
-- ROLE turns off and no one can set) is let through: a superuser can change anything
-- anyway, and imports history this way. The capture role is named when the
-- trigger is created: audit_capture, or the installing role where roles cannot be created.
CREATE FUNCTION audit.refuse_forged_event() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r
               WHERE r.rolname = CURRENT_USER AND r.rolsuper) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'audit_mw: % refused: an audit event records the server''s time, '
        'transaction, role and client address, and only capture writes row changes',
        TG_OP || ' on ' || TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege',
              HINT = 'write application events through audit.log_event()';
END
$$;
REVOKE ALL ON FUNCTION audit.refuse_forged_event() FROM PUBLIC;

DO $$
DECLARE
    capture_role text := CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                                           WHERE rolname = 'audit_capture')
                              THEN 'audit_capture' ELSE CURRENT_USER END;
BEGIN
    EXECUTE pg_catalog.format($t$
        CREATE TRIGGER events_server_truth BEFORE INSERT ON audit.events FOR EACH ROW
        WHEN (pg_catalog.current_setting('is_superuser') = 'off'
              AND (NEW.occurred_at IS DISTINCT FROM pg_catalog.statement_timestamp()
              OR NEW.db_role IS DISTINCT FROM SESSION_USER::text
              OR NEW.txid IS DISTINCT FROM pg_catalog.pg_current_xact_id()
              OR NEW.client_addr IS DISTINCT FROM pg_catalog.inet_client_addr()
              OR (NEW.kind = 'data') IS DISTINCT FROM (CURRENT_USER = %L::name)))
        EXECUTE FUNCTION audit.refuse_forged_event()$t$, capture_role);
END
$$;
ALTER TABLE audit.events ENABLE ALWAYS TRIGGER events_server_truth;

-- The sealer's lease. One row; a sealer takes it (audit.take_seal_lease) when no live
-- backend holds it, keeps it across its batches and gives it back at the end. A crashed
-- sealer's lease lapses with its backend. Only roles that may write the chain can take it.
CREATE TABLE audit.seal_lease (
    only_row     boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    holder_pid   integer,
    holder_role  text,
    taken_at     timestamptz
);
INSERT INTO audit.seal_lease DEFAULT VALUES;
COMMENT ON TABLE audit.seal_lease IS
    'audit_mw: which backend is sealing (one row); written only by audit.take_seal_lease '
    'and audit.give_seal_lease';

-- Takes the lease, or says who holds it. Never waits: a lease being taken or held by
-- retention (which holds the row lock while it drops a partition) is reported as held.
CREATE FUNCTION audit.take_seal_lease(
    OUT taken boolean, OUT holder_pid integer, OUT holder_role text, OUT taken_at timestamptz)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lease record;
BEGIN
    IF NOT pg_catalog.has_table_privilege(SESSION_USER, 'audit.chain', 'INSERT') THEN
        RAISE EXCEPTION 'audit_mw: role % may not seal (no INSERT on audit.chain)', SESSION_USER
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    BEGIN
        SELECT * INTO lease FROM audit.seal_lease FOR UPDATE NOWAIT;
    EXCEPTION WHEN lock_not_available THEN
        taken := false;
        RETURN;
    END;
    IF lease.holder_pid IS NOT NULL AND lease.holder_pid <> pg_catalog.pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                   WHERE a.pid = lease.holder_pid) THEN
        taken := false;
        holder_pid := lease.holder_pid;
        holder_role := lease.holder_role;
        taken_at := lease.taken_at;
        RETURN;
    END IF;
    UPDATE audit.seal_lease
    SET holder_pid = pg_catalog.pg_backend_pid(), holder_role = SESSION_USER,
        taken_at = pg_catalog.clock_timestamp();
    taken := true;
    holder_pid := pg_catalog.pg_backend_pid();
    holder_role := SESSION_USER;
    taken_at := pg_catalog.clock_timestamp();
END
$$;

CREATE FUNCTION audit.give_seal_lease() RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    UPDATE audit.seal_lease SET holder_pid = NULL, holder_role = NULL, taken_at = NULL
    WHERE holder_pid = pg_catalog.pg_backend_pid();
$$;

-- For retention: hold the lease row until the end of the transaction (no seal can start),
-- after waiting for a lease being taken; refuses while a live sealer holds the lease.
CREATE FUNCTION audit.hold_seal_lease() RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    lease record;
BEGIN
    SELECT * INTO lease FROM audit.seal_lease FOR UPDATE;
    IF lease.holder_pid IS NOT NULL AND lease.holder_pid <> pg_catalog.pg_backend_pid()
       AND EXISTS (SELECT 1 FROM pg_catalog.pg_stat_activity AS a
                   WHERE a.pid = lease.holder_pid) THEN
        RAISE EXCEPTION 'audit_mw: a seal is running (backend %, role %, since %); '
            'try again when it is done', lease.holder_pid, lease.holder_role, lease.taken_at
            USING ERRCODE = 'lock_not_available';
    END IF;
END
$$;

REVOKE ALL ON audit.seal_lease FROM PUBLIC;
REVOKE ALL ON FUNCTION audit.column_type_tree(regclass), audit.unsafe_casts(regclass),
    audit.refuse_unsafe_casts(regclass), audit.recorded_table(oid, text, text),
    audit.hold_seal_lease(), audit.take_seal_lease(), audit.give_seal_lease() FROM PUBLIC;
-- Capture calls the cast check as audit_capture; the sealers take and give the lease (the
-- function checks that the caller may seal).
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'audit_capture') THEN
        GRANT EXECUTE ON FUNCTION audit.column_type_tree(regclass), audit.unsafe_casts(regclass),
            audit.refuse_unsafe_casts(regclass), audit.recorded_table(oid, text, text)
            TO audit_capture;
    END IF;
    IF EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'audit_reader') THEN
        GRANT EXECUTE ON FUNCTION audit.take_seal_lease(), audit.give_seal_lease()
            TO audit_reader;
    END IF;
END
$$;

-- DDL on the timeline. Where the installing role may create event triggers (a superuser),
-- install creates audit_mw_ddl (ddl_command_end) and audit_mw_drop (sql_drop), ENABLE
-- ALWAYS, on these two functions; elsewhere status says that DDL is not watched.
-- Recorded as kind 'ddl' events (action: the command tag; resource: the object; db_role:
-- the session's role): DDL on a tracked table or one of its partitions, on anything in
-- schema audit (not the partitions retention drops), and CREATE CAST. Refused: leaving a
-- capture trigger of a tracked table disabled or not ENABLE ALWAYS, or dropping one, unless
-- the session's role is a superuser or a member of audit_owner (track and untrack do that);
-- and doing the same to a guard of the audit schema, unless a superuser. The functions
-- read the catalog and insert; they call nothing the audited roles define.
CREATE FUNCTION audit.tracked_relation(p_relid oid) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    -- pg_partition_ancestors lists nothing for a table that is not partitioned.
    SELECT EXISTS (SELECT 1 FROM audit.tracked_tables AS t
                   WHERE t.relid = p_relid
                      OR t.relid IN (SELECT a.relid
                                     FROM pg_catalog.pg_partition_ancestors(p_relid) AS a))
$$;

CREATE FUNCTION audit.session_may(p_what text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles AS r
                   WHERE r.rolname = SESSION_USER
                     AND (r.rolsuper OR (p_what = 'capture'
                          AND pg_catalog.pg_has_role(r.oid, 'audit_owner', 'MEMBER'))))
$$;

CREATE FUNCTION audit.watch_ddl() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd      record;
    relid    oid;
    tracked  boolean;
    bad      text;
BEGIN
    FOR cmd IN SELECT * FROM pg_catalog.pg_event_trigger_ddl_commands() LOOP
        relid := CASE cmd.classid
                 WHEN 'pg_catalog.pg_class'::pg_catalog.regclass THEN cmd.objid
                 WHEN 'pg_catalog.pg_trigger'::pg_catalog.regclass THEN
                     (SELECT t.tgrelid FROM pg_catalog.pg_trigger AS t WHERE t.oid = cmd.objid)
                 END;
        tracked := relid IS NOT NULL AND audit.tracked_relation(relid);
        IF tracked AND NOT audit.session_may('capture') THEN
            SELECT pg_catalog.string_agg(t.tgname, ', ') INTO bad
            FROM pg_catalog.pg_trigger AS t
            WHERE t.tgrelid = relid AND t.tgname LIKE 'audit\_mw\_%' AND t.tgenabled <> 'A';
            IF bad IS NOT NULL THEN
                RAISE EXCEPTION 'audit_mw: capture trigger % of % must stay ENABLE ALWAYS',
                    bad, relid::regclass
                    USING ERRCODE = 'insufficient_privilege',
                          HINT = 'untrack the table as its audit owner to stop capture';
            END IF;
        END IF;
        IF cmd.schema_name = 'audit' AND relid IS NOT NULL AND NOT audit.session_may('guard') THEN
            SELECT pg_catalog.string_agg(t.tgname, ', ') INTO bad
            FROM pg_catalog.pg_trigger AS t
            WHERE t.tgrelid = relid AND NOT t.tgisinternal AND t.tgenabled <> 'A';
            IF bad IS NOT NULL THEN
                RAISE EXCEPTION 'audit_mw: guard % of % must stay ENABLE ALWAYS',
                    bad, relid::regclass USING ERRCODE = 'insufficient_privilege';
            END IF;
        END IF;
        IF tracked OR cmd.schema_name = 'audit' OR cmd.object_type = 'cast' THEN
            INSERT INTO audit.events (kind, action, schema_name, table_name, resource_type,
                                      resource_id, application_name, client_addr)
            SELECT 'ddl', cmd.command_tag, n.nspname, c.relname, cmd.object_type,
                   cmd.object_identity,
                   NULLIF(pg_catalog.current_setting('application_name'), ''),
                   pg_catalog.inet_client_addr()
            FROM (SELECT 1) AS one
            LEFT JOIN pg_catalog.pg_class AS c ON c.oid = relid
            LEFT JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace;
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION audit.watch_drop() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    obj      record;
    table_of regclass;
BEGIN
    FOR obj IN SELECT * FROM pg_catalog.pg_event_trigger_dropped_objects() WHERE original LOOP
        IF obj.object_type = 'trigger' THEN
            -- address_names: schema, table, trigger; the table is still there. Read from the
            -- catalog: the owner of this function may have no USAGE on the table's schema.
            SELECT c.oid INTO table_of
            FROM pg_catalog.pg_class AS c
            JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
            WHERE n.nspname = obj.address_names[1] AND c.relname = obj.address_names[2];
            IF obj.address_names[3] LIKE 'audit\_mw\_%' AND table_of IS NOT NULL
               AND audit.tracked_relation(table_of) AND NOT audit.session_may('capture') THEN
                RAISE EXCEPTION 'audit_mw: capture trigger % may not be dropped',
                    obj.object_identity USING ERRCODE = 'insufficient_privilege',
                          HINT = 'untrack the table as its audit owner to stop capture';
            END IF;
            IF obj.schema_name = 'audit' AND NOT audit.session_may('guard') THEN
                RAISE EXCEPTION 'audit_mw: guard % may not be dropped', obj.object_identity
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
        END IF;
        IF (obj.object_type = 'table' AND EXISTS (SELECT 1 FROM audit.tracked_tables AS t
                                                  WHERE t.relid = obj.objid))
           OR (obj.schema_name = 'audit' AND obj.object_name NOT LIKE 'events\_p%')
           OR obj.object_type = 'cast' THEN
            INSERT INTO audit.events (kind, action, schema_name, table_name, resource_type,
                                      resource_id, application_name, client_addr)
            VALUES ('ddl', 'DROP ' || pg_catalog.upper(obj.object_type), obj.schema_name,
                    CASE WHEN obj.object_type = 'table' THEN obj.object_name END,
                    obj.object_type, obj.object_identity,
                    NULLIF(pg_catalog.current_setting('application_name'), ''),
                    pg_catalog.inet_client_addr());
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION audit.watch_ddl(), audit.watch_drop(), audit.tracked_relation(oid),
    audit.session_may(text) FROM PUBLIC;
