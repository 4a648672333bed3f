-- audit_mw 0010: a partition created or attached after track is captured from its first row.
--
-- A statement aimed at a partition fires the partition's own statement triggers, and
-- PostgreSQL does not copy statement triggers to a new partition. Where DDL is watched (a
-- superuser installed; see 0009), the event trigger audit_mw_partitions runs
-- audit.watch_partitions() at the end of every CREATE TABLE and ALTER TABLE: each
-- partition, at any depth, below a table whose capture triggers it finds, gets the same
-- capture as its parent in the same transaction, before any row can reach it. Elsewhere
-- status reports the partition until `audit-mw retrack`, as before.
--
-- Why this function is owned by a superuser (install hands it over when it creates the event
-- trigger): the new partition belongs to whoever created it, and only its owner or a
-- superuser may make a trigger ENABLE ALWAYS on it. Such a function must never run code
-- that another role can change: it reads the catalog only (not audit.tracked_tables, which
-- the schema owner could replace with a view calling its own functions), calls only
-- pg_catalog functions, and composes identifiers with %I and values with %L. What a table's
-- capture is, it reads from the triggers on the partition's parent, by function oid.
--
-- Refused: attaching a table that carries a trigger named like capture that does not run
-- capture, or the capture of another tracked table; the error names it. A capture trigger
-- on the attached table that a non-privileged session left disabled is made ENABLE ALWAYS.
CREATE FUNCTION audit.watch_partitions() RETURNS event_trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    cmd        record;
    part       record;
    parent_tg  record;
    own_tg     record;
    seen       oid[] := '{}';
    root       oid;
    names      text[] := ARRAY['audit_mw_insert', 'audit_mw_update', 'audit_mw_delete',
                               'audit_mw_truncate'];
    funcs      oid[] := ARRAY[
        pg_catalog.to_regprocedure('audit.capture_insert()'),
        pg_catalog.to_regprocedure('audit.capture_update_rows()'),
        pg_catalog.to_regprocedure('audit.capture_delete()'),
        pg_catalog.to_regprocedure('audit.capture_truncate()')];
    row_update oid := pg_catalog.to_regprocedure('audit.capture_update()');
    clauses    text[] := ARRAY[
        'AFTER INSERT ON %s REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT',
        'AFTER UPDATE ON %s REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows '
            'FOR EACH STATEMENT',
        'AFTER DELETE ON %s REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT',
        'AFTER TRUNCATE ON %s FOR EACH STATEMENT'];
    privileged boolean;
    i          integer;
    b          integer;
    start      integer;
    args       text[];
    own_args   text[];
    list       text;
    created    boolean;
    disabled   boolean;
BEGIN
    IF funcs[1] IS NULL THEN
        RETURN;  -- the capture functions are gone: nothing to copy
    END IF;
    -- A superuser, or a member of the audit owner, may leave a capture trigger disabled on
    -- purpose; any other session's disabled capture trigger is made ENABLE ALWAYS again.
    SELECT r.rolsuper OR COALESCE(pg_catalog.pg_has_role(r.oid, o.oid, 'MEMBER'), false)
    INTO privileged
    FROM pg_catalog.pg_roles AS r
    LEFT JOIN pg_catalog.pg_roles AS o ON o.rolname = 'audit_owner'
    WHERE r.rolname = SESSION_USER;
    -- track puts capture on every partition itself: it says so for its transaction, so that
    -- its ALTER TABLE of a partitioned table does not first copy capture to every partition.
    -- Only a session that may track anyway is believed.
    IF COALESCE(privileged, false)
       AND pg_catalog.current_setting('audit_mw.tracking', true) = 'on' THEN
        RETURN;
    END IF;

    -- The relations a command names, and what is below them: a partition created (CREATE
    -- TABLE ... PARTITION OF names it), or the partitions of a table that one was attached
    -- to (ALTER TABLE ... ATTACH PARTITION names the parent). Not the whole tree above:
    -- track's own ALTER TABLE of each partition would then cost a scan of every partition.
    FOR cmd IN SELECT DISTINCT c.objid FROM pg_catalog.pg_event_trigger_ddl_commands() AS c
               WHERE c.classid = 'pg_catalog.pg_class'::pg_catalog.regclass LOOP
        root := cmd.objid;
        IF root = ANY (seen) THEN
            CONTINUE;
        END IF;
        seen := seen || root;
        FOR part IN SELECT t.relid, t.parentrelid
                    FROM pg_catalog.pg_partition_tree(root) AS t
                    JOIN pg_catalog.pg_class AS c ON c.oid = t.relid
                    WHERE t.parentrelid IS NOT NULL AND c.relkind IN ('r', 'p')
                    ORDER BY t.level, t.relid LOOP
            -- Only below a parent that has capture (read again: a deeper level may have
            -- just got it).
            IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_trigger AS g
                           WHERE g.tgrelid = part.parentrelid AND g.tgname = 'audit_mw_insert'
                             AND g.tgfoid = funcs[1]) THEN
                CONTINUE;
            END IF;
            created := false;
            disabled := false;
            FOR i IN 1 .. 4 LOOP
                SELECT g.tgargs, g.tgnargs, g.tgfoid INTO parent_tg
                FROM pg_catalog.pg_trigger AS g
                WHERE g.tgrelid = part.parentrelid AND g.tgname = names[i];
                IF NOT FOUND THEN
                    CONTINUE;  -- the parent lacks it too; status reports the parent
                END IF;
                -- The parent's arguments (each NUL-terminated in tgargs).
                args := '{}';
                start := 0;
                FOR b IN 0 .. pg_catalog.length(parent_tg.tgargs) - 1 LOOP
                    IF pg_catalog.get_byte(parent_tg.tgargs, b) = 0 THEN
                        args := args || pg_catalog.convert_from(
                            pg_catalog.substring(parent_tg.tgargs, start + 1, b - start),
                            pg_catalog.getdatabaseencoding());
                        start := b + 1;
                    END IF;
                END LOOP;

                SELECT g.tgargs, g.tgfoid, g.tgenabled INTO own_tg
                FROM pg_catalog.pg_trigger AS g
                WHERE g.tgrelid = part.relid AND g.tgname = names[i];
                IF FOUND THEN
                    IF own_tg.tgfoid <> funcs[i]
                       AND NOT (i = 2 AND own_tg.tgfoid = row_update) THEN
                        RAISE EXCEPTION 'audit_mw: % has a trigger % that is not audit_mw''s '
                            'capture; it cannot be a partition of a tracked table',
                            part.relid::pg_catalog.regclass, names[i]
                            USING ERRCODE = 'insufficient_privilege',
                                  HINT = 'drop that trigger first';
                    END IF;
                    own_args := '{}';
                    start := 0;
                    FOR b IN 0 .. pg_catalog.length(own_tg.tgargs) - 1 LOOP
                        IF pg_catalog.get_byte(own_tg.tgargs, b) = 0 THEN
                            own_args := own_args || pg_catalog.convert_from(
                                pg_catalog.substring(own_tg.tgargs, start + 1, b - start),
                                pg_catalog.getdatabaseencoding());
                            start := b + 1;
                        END IF;
                    END LOOP;
                    IF own_args[4:5] IS DISTINCT FROM args[4:5] THEN
                        RAISE EXCEPTION 'audit_mw: % carries the capture of %.%, not of the '
                            'table it is a partition of (%.%)', part.relid::pg_catalog.regclass,
                            own_args[4], own_args[5], args[4], args[5]
                            USING ERRCODE = 'object_in_use',
                                  HINT = 'untrack it (as the audit owner) before attaching it';
                    END IF;
                    disabled := disabled OR own_tg.tgenabled <> 'A';
                    CONTINUE;
                END IF;

                -- Excluded and masked columns by attribute number (arguments 6 and 7) are
                -- the parent's; the same columns may have other numbers here. Mapped through
                -- their names now (a partition's columns are named as its parent's); before
                -- schema version 9 the parent has none and the names (2 and 3) are used.
                IF i < 4 THEN
                    FOR b IN 2 .. 3 LOOP
                        SELECT COALESCE(pg_catalog.array_agg(DISTINCT c.attnum ORDER BY c.attnum),
                                        '{}')::text INTO list
                        FROM pg_catalog.pg_attribute AS c
                        WHERE c.attrelid = part.relid AND c.attnum > 0 AND NOT c.attisdropped
                          AND c.attname IN (
                              SELECT p.attname FROM pg_catalog.pg_attribute AS p
                              WHERE p.attrelid = part.parentrelid AND NOT p.attisdropped
                                AND CASE WHEN pg_catalog.array_length(args, 1) >= 7
                                         THEN p.attnum = ANY (args[b + 4]::int2[])
                                         ELSE p.attname = ANY (args[b]::name[]) END);
                        args[b + 4] := list;
                    END LOOP;
                    args[8] := COALESCE(args[8], '');
                END IF;
                SELECT pg_catalog.string_agg(pg_catalog.quote_literal(a), ', ' ORDER BY n)
                INTO list FROM pg_catalog.unnest(args) WITH ORDINALITY AS u(a, n);
                EXECUTE pg_catalog.format('CREATE TRIGGER %I ' || clauses[i]
                                          || ' EXECUTE FUNCTION %s(%s)',
                                          names[i], part.relid::pg_catalog.regclass,
                                          funcs[i]::pg_catalog.regproc, list);
                created := true;
            END LOOP;
            IF created OR (disabled AND NOT COALESCE(privileged, false)) THEN
                -- One command, so that the DDL watch sees all four ENABLE ALWAYS at its end.
                SELECT pg_catalog.string_agg(pg_catalog.format('ENABLE ALWAYS TRIGGER %I',
                                                               g.tgname), ', ')
                INTO list
                FROM pg_catalog.pg_trigger AS g
                WHERE g.tgrelid = part.relid AND g.tgname = ANY (names);
                EXECUTE pg_catalog.format('ALTER TABLE %s %s',
                                          part.relid::pg_catalog.regclass, list);
            END IF;
        END LOOP;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION audit.watch_partitions() FROM PUBLIC;

-- The DDL watch (0009), with one change: a CREATE TRIGGER on a tracked table is refused when
-- the new trigger is named like capture but does not run capture (CREATE OR REPLACE TRIGGER
-- could otherwise swap a capture trigger's function), instead of when it is not yet ENABLE
-- ALWAYS: a capture trigger starts ENABLE ORIGIN, and audit.watch_partitions() makes it
-- ALWAYS in its next command. Creating a trigger that runs capture needs EXECUTE on the
-- capture functions, which the audited roles do not have.
CREATE OR REPLACE FUNCTION audit.watch_ddl() RETURNS event_trigger
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
            IF cmd.command_tag = 'CREATE TRIGGER' THEN
                SELECT t.tgname INTO bad
                FROM pg_catalog.pg_trigger AS t
                WHERE t.oid = cmd.objid AND t.tgname LIKE 'audit\_mw\_%'
                  AND t.tgfoid NOT IN (SELECT p.oid FROM pg_catalog.pg_proc AS p
                                       WHERE p.pronamespace = 'audit'::pg_catalog.regnamespace
                                         AND p.proname IN ('capture_insert', 'capture_update',
                                                           'capture_update_rows',
                                                           'capture_delete',
                                                           'capture_truncate'));
                IF bad IS NOT NULL THEN
                    RAISE EXCEPTION 'audit_mw: trigger % of % is named like capture but does '
                        'not run it', bad, relid::regclass
                        USING ERRCODE = 'insufficient_privilege';
                END IF;
            ELSE
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
