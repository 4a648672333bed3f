-- Statements of the live stream (see docs/archive.md, "The live stream").

-- name: chain_id
SELECT chain_id::text AS chain_id FROM audit.chains;

-- name: next_entries
-- The next sealed entries in chain order after a position, each with its event as JSON
-- (null when retention dropped it). Sealed entries never change and are never inserted
-- below the head, so reading by position never skips one.
SELECT c.position, c.event_id, pg_catalog.row_to_json(e)::text AS event
FROM audit.chain AS c
LEFT JOIN audit.events AS e ON e.id = c.event_id
WHERE c.position > %(after)s
ORDER BY c.position
LIMIT %(limit)s;

-- name: head
-- The sealed head, and when the newest sealed event happened.
SELECT c.position, e.occurred_at
FROM audit.chain AS c
LEFT JOIN audit.events AS e ON e.id = c.event_id
ORDER BY c.position DESC
LIMIT 1;

-- name: occurred_at
SELECT e.occurred_at
FROM audit.chain AS c
JOIN audit.events AS e ON e.id = c.event_id
WHERE c.position = %(position)s;
