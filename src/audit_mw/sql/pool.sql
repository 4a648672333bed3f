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
