"""Context edge cases of the capture functions as rewritten for speed."""

from __future__ import annotations

import json
from typing import Any

import psycopg

from audit_mw.capture.tracking import track
from tests._db import audit_rows, set_context

Conn = psycopg.Connection[Any]


def test_valid_but_oversized_extra_is_dropped_not_fatal(conn: Conn) -> None:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    track(conn, "notes")
    set_context(conn, extra=json.dumps({"pad": "x" * 5000}))
    conn.execute("INSERT INTO notes VALUES (1, 'a')")
    conn.execute("UPDATE notes SET body = 'b'")
    conn.execute("DELETE FROM notes")
    rows = audit_rows(conn, "notes")
    assert [r["action"] for r in rows] == ["INSERT", "UPDATE", "DELETE"]
    for row in rows:
        assert row["context_extra"] is None
        assert row["context_issues"] == ["extra_invalid"]


def test_read_context_is_inlined_and_agrees_with_capture(conn: Conn) -> None:
    set_context(conn, user_id="u" * 300, ip_address="10.1.2.3", extra='{"a": 1}')
    (ctx,) = conn.execute(
        "SELECT row_to_json(audit.read_context())::jsonb").fetchone()  # type: ignore[misc]
    assert ctx == {"user_id": "u" * 256, "client_ip": "10.1.2.3", "request_id": None,
                   "user_agent": None, "extra": {"a": 1}, "issues": ["user_id_truncated"]}
    # One expression without FROM: the planner inlines it, so no function call per use.
    plan = conn.execute("EXPLAIN (VERBOSE) SELECT audit.read_context()").fetchall()
    assert "read_context" not in "\n".join(str(r[0]) for r in plan)


def test_masked_and_composite_keys_take_the_general_path(conn: Conn) -> None:
    conn.execute("CREATE TABLE cards (org text, no int, pan text, note text, "
                 "PRIMARY KEY (org, no))")
    track(conn, "cards", mask=["pan"])
    conn.execute("INSERT INTO cards VALUES ('acme', 1, '4111111111111111', NULL), "
                 "('acme', 2, NULL, 'n')")
    conn.execute("UPDATE cards SET pan = '5500000000000004', note = 'x' WHERE no = 1")
    conn.execute("DELETE FROM cards WHERE no = 2")
    ins1, ins2, upd, dele = audit_rows(conn, "cards")
    assert json.loads(ins1["record_id"]) == ["acme", 1]
    assert ins1["new_values"]["pan"] == "[masked]"
    assert ins2["new_values"]["pan"] is None
    assert upd["old_values"]["pan"] == upd["new_values"]["pan"] == "[masked]"
    assert upd["changed_fields"] == ["note", "pan"]
    assert json.loads(dele["record_id"]) == ["acme", 2]
    dump = conn.execute("SELECT string_agg(e::text, ' ') FROM audit.events e").fetchone()
    assert dump is not None
    assert "4111" not in dump[0]
    assert "5500" not in dump[0]
