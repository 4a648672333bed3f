"""A new context in the BEGIN's own message: it holds for its transaction, and only for it.

The settings travel as ``SET LOCAL`` in the simple-protocol message of the ``BEGIN`` psycopg
sends anyway. Whatever ends that transaction ends what it carried, including the ways the
package does not see the ``BEGIN`` of the next one: ``conn.transaction()`` after a
``commit()``, ``COMMIT AND CHAIN``, a string holding ``COMMIT; BEGIN``. Each test first
makes ``alice`` the session-level context of the connection, so that a wrong guess would
attribute a write to her instead of to ``bob``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from audit_mw.context import AuditContext, audit_context
from audit_mw.pool import AuditClientCursor, AuditPool, forget_context, instrument_connection
from audit_mw.pool._carry import _begin_message, _set_locals
from tests._pool import (
    INSERT_NOTE,
    attribution,
    note_events,
    protocol_trace,
    read_settings,
    sent_queries,
)

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]


def alice_at_session_level(conn: Conn) -> None:
    """Three transactions with alice: the first (the connection's first context) sets her at
    session level, and in transaction mode nothing does."""
    with audit_context(user_id="alice"):
        for _ in range(3):
            conn.execute(INSERT_NOTE, ["alice", None])
            conn.commit()


@contextlib.contextmanager
def bob_after_alice(app_dsn: str, mode: str = "session") -> Iterator[Conn]:
    """An instrumented connection with alice at session level, and bob the current user."""
    with psycopg.connect(app_dsn) as conn:
        instrument_connection(conn, context_mode=mode)  # type: ignore[arg-type]
        alice_at_session_level(conn)
        with audit_context(user_id="bob"):
            yield conn


def bob_in_the_begin(conn: Conn) -> None:
    """Open a transaction whose BEGIN carries bob (a context seen for the first time)."""
    _, lines = protocol_trace(conn, lambda: conn.execute(INSERT_NOTE, ["bob", None]))
    assert sent_queries(lines)[0].startswith('"BEGIN; SET LOCAL "audit"."user_id" = \'bob\'')


def commit_then_transaction(conn: Conn) -> None:
    conn.commit()
    with conn.transaction():  # its BEGIN is psycopg's own, not a statement's
        conn.execute(INSERT_NOTE, ["bob", None])


def commit_and_chain(conn: Conn) -> None:
    conn.execute("COMMIT AND CHAIN")
    conn.execute(INSERT_NOTE, ["bob", None])
    conn.commit()


def commit_and_begin_in_one_string(conn: Conn) -> None:
    AuditClientCursor(conn).execute("COMMIT; BEGIN")
    conn.execute(INSERT_NOTE, ["bob", None])
    conn.commit()


def rollback_and_chain(conn: Conn) -> None:
    conn.execute("ROLLBACK AND CHAIN")
    conn.execute(INSERT_NOTE, ["bob", None])
    conn.commit()


def rollback_to_a_savepoint(conn: Conn) -> None:
    with contextlib.suppress(ZeroDivisionError), conn.transaction():  # a savepoint
        conn.execute(INSERT_NOTE, ["lost", None])
        raise ZeroDivisionError  # rolled back to it
    conn.execute("SAVEPOINT s")
    conn.execute(INSERT_NOTE, ["lost", None])
    conn.execute("ROLLBACK TO SAVEPOINT s")
    conn.execute(INSERT_NOTE, ["bob", None])
    conn.commit()


def inside_own_pipeline(conn: Conn) -> None:
    with conn.pipeline():
        conn.execute("COMMIT AND CHAIN")
        conn.execute(INSERT_NOTE, ["bob", None])
    conn.commit()


@pytest.mark.parametrize("then", [
    commit_then_transaction, commit_and_chain, commit_and_begin_in_one_string,
    rollback_and_chain, rollback_to_a_savepoint, inside_own_pipeline,
])
@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_what_ends_the_transaction_ends_what_its_begin_carried(
    app_dsn: str, notes: Conn, then: Callable[[Conn], None], mode: str
) -> None:
    with bob_after_alice(app_dsn, mode) as conn:
        if mode == "session":
            bob_in_the_begin(conn)
        else:
            conn.execute(INSERT_NOTE, ["bob", None])
        then(conn)
        assert read_settings(conn)["audit.user_id"] == "bob"
    # ROLLBACK AND CHAIN undoes the first write of bob's.
    bobs = 1 if then is rollback_and_chain else 2
    assert attribution(notes) == [("alice", "alice")] * 3 + [("bob", "bob")] * bobs


def test_a_two_phase_transaction_carries_the_context_too(app_dsn: str, notes: Conn) -> None:
    with bob_after_alice(app_dsn) as conn:
        bob_in_the_begin(conn)
        conn.commit()
        conn.tpc_begin(conn.xid(1, "audit-mw-test", "b"))  # psycopg's own BEGIN
        conn.execute(INSERT_NOTE, ["bob", None])
        assert read_settings(conn)["audit.user_id"] == "bob"
        conn.tpc_rollback()  # PREPARE TRANSACTION needs max_prepared_transactions
    assert attribution(notes) == [("alice", "alice")] * 3 + [("bob", "bob")]


def test_set_transaction_may_follow_the_settings_in_the_begin(
    app_dsn: str, notes: Conn
) -> None:
    with bob_after_alice(app_dsn) as conn:
        conn.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        assert conn.execute("SHOW transaction_isolation").fetchone() == ("serializable",)
        conn.execute(INSERT_NOTE, ["bob", None])
        conn.commit()
    assert attribution(notes) == [("alice", "alice")] * 3 + [("bob", "bob")]


HOSTILE = AuditContext(
    user_id="o'brien\"; SET LOCAL audit.user_id = 'x'; -- \\' 日本\n\t",
    client_ip="2001:db8::1",
    request_id="req-ok_1",
    user_agent="E'\\\\' $$ $q$ \\x00 <script>",
    extra={"k'ey": "va\\lue\"; DROP TABLE notes; --"},
)


def test_hostile_values_in_the_begin_message_are_recorded_exactly(
    app_dsn: str, notes: Conn
) -> None:
    with psycopg.connect(app_dsn) as conn:
        instrument_connection(conn)
        alice_at_session_level(conn)
        with audit_context(HOSTILE):
            _, lines = protocol_trace(conn, lambda: conn.execute(INSERT_NOTE, ["hostile", None]))
            assert sent_queries(lines)[0].startswith('"BEGIN; SET LOCAL ')
            conn.commit()
    (event,) = [e for e in note_events(notes) if e["author"] == "hostile"]
    assert event["app_user_id"] == HOSTILE.user_id
    assert event["request_id"] == HOSTILE.request_id
    with notes.cursor() as cur:
        row = cur.execute(
            "SELECT host(client_ip), user_agent, context_extra FROM audit.events"
            " WHERE new_values ->> 'author' = 'hostile'").fetchone()
    assert row == ("2001:db8::1", HOSTILE.user_agent, dict(HOSTILE.extra))


# Values the BEGIN's message quotes as they are (ASCII, no quote, no backslash), and values it
# leaves to libpq: each must read back exactly, whatever the encoding and the string syntax.
LITERALS = [
    "req-1", "a;b -- c", "$$ $q$ /* */", "tab\there\nnewline", "E'", "x'y", "back\\slash",
    "\\'; SET LOCAL audit.user_id = 'pwned'; --", "日本語", "ソ' ; --", "x" * 256,
]


@pytest.mark.parametrize("encoding", ["UTF8", "SJIS"])
@pytest.mark.parametrize("standard_strings", ["on", "off"])
def test_begin_literals_are_libpq_s_and_read_back_exactly(
    app_dsn: str, encoding: str, standard_strings: str
) -> None:
    with psycopg.connect(app_dsn) as conn:
        conn.execute(f"SET client_encoding = {encoding}")
        conn.execute(f"SET standard_conforming_strings = {standard_strings}")
        conn.commit()
        escape = psycopg.pq.Escaping(conn.pgconn).escape_literal
        python_encoding = conn.info.encoding
        for value in LITERALS:
            if encoding == "SJIS" and not _encodes(value, python_encoding):
                continue
            context = AuditContext(user_id=value, request_id="req-2", user_agent=value)
            message = _begin_message(b"BEGIN", context, None, conn)
            expected = b"; ".join([b"BEGIN"] + [
                head + escape(setting.encode(python_encoding))
                for head, setting in zip(_set_locals(), context.setting_values(), strict=True)
            ])
            assert message == expected, value
            conn.pgconn.send_query(message)
            while (result := conn.pgconn.get_result()) is not None:
                assert result.status == psycopg.pq.ExecStatus.COMMAND_OK, result.error_message
            settings = read_settings(conn)
            conn.rollback()
            assert settings["audit.user_id"] == value
            assert settings["audit.user_agent"] == value
            assert settings["audit.request_id"] == "req-2"


def _encodes(value: str, encoding: str) -> bool:
    try:
        value.encode(encoding)
    except UnicodeEncodeError:
        return False
    return True


def test_a_pool_of_new_contexts_sends_only_what_differs(app_dsn: str, notes: Conn) -> None:
    with AuditPool(app_dsn, min_size=1, max_size=1) as pool:
        for number in range(4):
            context = AuditContext(user_id="carol", client_ip="192.0.2.1",
                                   request_id=f"req-{number}", user_agent="ua")
            with audit_context(context), pool.connection() as conn:
                _, lines = protocol_trace(conn, lambda: conn.execute(INSERT_NOTE, ["carol", None]))
            begin = [q for q in sent_queries(lines) if "BEGIN" in q]
            if number == 0:
                assert begin == []  # the connection's first context: at session level
            else:
                assert begin == [
                    f'"BEGIN; SET LOCAL "audit"."request_id" = \'req-{number}\'"']
    assert [(e["app_user_id"], e["request_id"]) for e in note_events(notes)] == [
        ("carol", f"req-{number}") for number in range(4)]


def test_after_forget_context_a_begin_carries_all_five(app_dsn: str, notes: Conn) -> None:
    with psycopg.connect(app_dsn) as conn:
        instrument_connection(conn)
        alice_at_session_level(conn)
        conn.execute("RESET ALL")  # behind the package's back: it must be told
        conn.commit()
        forget_context(conn)
        with audit_context(user_id="bob"):
            _, lines = protocol_trace(conn, lambda: conn.execute(INSERT_NOTE, ["bob", None]))
            conn.commit()
        (begin,) = [q for q in sent_queries(lines) if "BEGIN" in q]
        assert begin.count("SET LOCAL") == 5
    assert attribution(notes) == [("alice", "alice")] * 3 + [("bob", "bob")]


def test_pipelines_of_their_own_rely_on_what_the_begin_carried(
    app_dsn: str, notes: Conn
) -> None:
    # executemany runs in a pipeline of psycopg's own: its first statement may rely on the
    # BEGIN's settings (nothing ran before it in that pipeline), however many there are.
    with bob_after_alice(app_dsn) as conn:
        def writes() -> None:
            conn.execute(INSERT_NOTE, ["bob", None])
            for _ in range(3):
                conn.cursor().executemany(INSERT_NOTE, [["bob", None], ["bob", None]])
            conn.execute(INSERT_NOTE, ["bob", None])
            conn.commit()

        _, lines = protocol_trace(conn, writes)
    assert not [line for line in lines if "set_config" in line]
    assert attribution(notes) == [("alice", "alice")] * 3 + [("bob", "bob")] * 8
