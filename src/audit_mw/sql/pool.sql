-- Statements used by the audit-aware pools (audit_mw.pool) to carry the request's context
-- to the capture triggers, which read it with audit.read_context().
-- Parameters, in this order: user_id, ip_address, request_id, user_agent, extra; an empty
-- string means "absent". Every setting is written each time, so that nothing of a previous
-- context survives.

-- name: apply_session
-- Session level (is_local = false). Run outside any transaction, so that it is committed
-- at once: no later ROLLBACK can bring back the values it replaced.
SELECT pg_catalog.set_config('audit.user_id', %s, false),
       pg_catalog.set_config('audit.ip_address', %s, false),
       pg_catalog.set_config('audit.request_id', %s, false),
       pg_catalog.set_config('audit.user_agent', %s, false),
       pg_catalog.set_config('audit.extra', %s, false);

-- name: apply_local
-- Transaction level (is_local = true): gone at the next COMMIT or ROLLBACK. Used behind a
-- transaction pooler, sent in the same transaction as the statement it attributes.
SELECT pg_catalog.set_config('audit.user_id', %s, true),
       pg_catalog.set_config('audit.ip_address', %s, true),
       pg_catalog.set_config('audit.request_id', %s, true),
       pg_catalog.set_config('audit.user_agent', %s, true),
       pg_catalog.set_config('audit.extra', %s, true);

-- name: set_local
-- Transaction level, sent in the same simple-protocol message as the BEGIN it follows (no
-- round trip of its own), once for each setting that differs from what the session holds.
-- A simple-protocol message has no parameters: the value is a literal escaped by libpq
-- (PQescapeLiteral, for the connection's encoding). SET is a utility statement: cheaper than
-- set_config() (no plan, no snapshot), so a SET TRANSACTION may still follow it. Nothing
-- later in the transaction can undo it: there is no savepoint before it.
SET LOCAL {setting} = {value}
