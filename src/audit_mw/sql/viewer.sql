-- Statements used by the audit viewer's pages (audit_mw.admin.viewer), besides the admin
-- routes' own (admin.sql). They run in the admin routes' read-only, time-limited transaction.

-- name: login_buckets
-- Logins and failed logins per time bucket (date_bin, PostgreSQL 14 and later). The range
-- is bounded by the page; occurred_at is served by events_time_brin_idx.
SELECT pg_catalog.date_bin(%(bucket)s::interval, e.occurred_at, %(origin)s::timestamptz)
           AS bucket,
       pg_catalog.count(*) FILTER (WHERE e.action = 'login_failed') AS failed,
       pg_catalog.count(*) FILTER (WHERE e.action = 'login') AS succeeded
FROM audit.events AS e
WHERE e.kind = 'auth'
  AND e.action IN ('login', 'login_failed')
  AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
GROUP BY 1
ORDER BY 1;

-- name: login_failures
-- Failed logins per attempted account (resource_id), client address and time bucket, up to
-- a cap (one row more tells the page that it was reached).
SELECT e.resource_id AS account,
       pg_catalog.host(e.client_ip) AS address,
       pg_catalog.date_bin(%(bucket)s::interval, e.occurred_at, %(origin)s::timestamptz)
           AS bucket,
       pg_catalog.count(*) AS failures,
       pg_catalog.min(e.occurred_at) AS first_seen,
       pg_catalog.max(e.occurred_at) AS last_seen
FROM audit.events AS e
WHERE e.kind = 'auth'
  AND e.action = 'login_failed'
  AND e.occurred_at >= %(start)s AND e.occurred_at < %(end)s
GROUP BY 1, 2, 3
ORDER BY 4 DESC, 3 DESC
LIMIT %(cap)s;
