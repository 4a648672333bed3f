-- audit_mw 0005: a record of verification runs, so that the admin routes can say when the
-- chain was last verified and with what result, without running a verification themselves.
--
-- Written by `audit-mw verify --record` (or integrity.verify(..., record=True)) as a role
-- that may insert here: the schema owner (GRANT audit_owner TO verifier_login). Readable by
-- audit_reader like every table of the schema. Append-only, like the trail.
CREATE TABLE audit.verification_runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at          timestamptz NOT NULL,
    finished_at         timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    status              text NOT NULL
        CHECK (status IN ('valid', 'valid_unanchored', 'tampered', 'unverifiable')),
    anchored            boolean NOT NULL,
    checked             bigint NOT NULL CHECK (checked >= 0),
    unsealed            bigint NOT NULL CHECK (unsealed >= 0),
    checkpoints         bigint NOT NULL CHECK (checkpoints >= 0),
    head_position       bigint NOT NULL CHECK (head_position >= 0),
    anchored_position   bigint,
    chain_id            uuid,
    kind                text,
    first_bad_id        bigint,
    first_bad_position  bigint,
    detail              text NOT NULL,
    db_role             text NOT NULL DEFAULT CURRENT_USER
);

COMMENT ON TABLE audit.verification_runs IS
    'audit_mw: one row per recorded verification of the hash chain; append-only.';

CREATE TRIGGER verification_runs_append_only
    BEFORE UPDATE OR DELETE ON audit.verification_runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER verification_runs_no_truncate
    BEFORE TRUNCATE ON audit.verification_runs
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.verification_runs ENABLE ALWAYS TRIGGER verification_runs_append_only;
ALTER TABLE audit.verification_runs ENABLE ALWAYS TRIGGER verification_runs_no_truncate;

REVOKE ALL ON audit.verification_runs FROM PUBLIC;
