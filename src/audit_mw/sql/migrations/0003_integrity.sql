-- audit_mw 0003: tamper evidence. The hash chain over audit.events and its checkpoints.
--
-- audit.events stays untouched and append-only; the chain lives beside it. Every table here
-- is append-only too: the sealer only ever inserts (see docs/integrity.md). Nothing in the
-- database holds a key: checkpoints are authenticated by keys that live in the environment.

-- The identity of the chain, created by the first seal. One row; a restored backup keeps
-- it, a reinstalled schema gets a new one, so checkpoints of one chain never match another.
CREATE TABLE audit.chains (
    chain_id    uuid PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT pg_catalog.now()
);

-- One row per sealed event, in chain order. The order is (event_txid, event_id): a seal takes
-- only events whose transaction id is below its snapshot's xmin, so no event can later
-- appear before an already sealed one.
CREATE TABLE audit.chain (
    position      bigint PRIMARY KEY CHECK (position > 0),
    event_id      bigint NOT NULL UNIQUE,
    event_txid    xid8 NOT NULL,
    content_hash  bytea NOT NULL CHECK (pg_catalog.octet_length(content_hash) = 32),
    entry_hash    bytea NOT NULL CHECK (pg_catalog.octet_length(entry_hash) = 32)
);

COMMENT ON TABLE audit.chain IS
    'audit_mw: hash chain over audit.events, in seal order; append-only.';

-- One row per seal: the chain head, authenticated with a key from the environment.
CREATE TABLE audit.checkpoints (
    seq            bigint PRIMARY KEY CHECK (seq > 0),
    chain_id       uuid NOT NULL,
    position       bigint NOT NULL,
    entry_count    bigint NOT NULL,
    head_hash      bytea NOT NULL,
    last_event_id  bigint,
    created_at     timestamptz NOT NULL,
    key_id         text NOT NULL,
    mac            bytea NOT NULL,
    sig_key_id     text,
    signature      bytea
);

COMMENT ON TABLE audit.checkpoints IS
    'audit_mw: authenticated chain heads, one per seal; append-only. Copies live outside '
    'the database (checkpoint file, logs).';

-- Seals read the events after the last sealed one in chain order.
CREATE INDEX events_txid_id_idx ON audit.events (txid, id);

-- The same loud append-only guards as audit.events, also under session_replication_role.
CREATE TRIGGER chains_append_only
    BEFORE UPDATE OR DELETE ON audit.chains
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER chains_no_truncate
    BEFORE TRUNCATE ON audit.chains
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER chain_append_only
    BEFORE UPDATE OR DELETE ON audit.chain
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER chain_no_truncate
    BEFORE TRUNCATE ON audit.chain
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER checkpoints_append_only
    BEFORE UPDATE OR DELETE ON audit.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
CREATE TRIGGER checkpoints_no_truncate
    BEFORE TRUNCATE ON audit.checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION audit.refuse_change();
ALTER TABLE audit.chains ENABLE ALWAYS TRIGGER chains_append_only;
ALTER TABLE audit.chains ENABLE ALWAYS TRIGGER chains_no_truncate;
ALTER TABLE audit.chain ENABLE ALWAYS TRIGGER chain_append_only;
ALTER TABLE audit.chain ENABLE ALWAYS TRIGGER chain_no_truncate;
ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER checkpoints_append_only;
ALTER TABLE audit.checkpoints ENABLE ALWAYS TRIGGER checkpoints_no_truncate;

REVOKE ALL ON audit.chains, audit.chain, audit.checkpoints FROM PUBLIC;
