"""instrument_engine on a sync engine, in process: late users, rollbacks, pool reuse."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from audit_mw_examples.fastapi_sqlalchemy.app import sqlalchemy_url
from sqlalchemy import Engine, create_engine, event, text

from audit_mw.capture.tracking import track
from audit_mw.context import audit_context, set_user
from audit_mw.errors import ConfigurationError
from audit_mw.integrations.sqlalchemy import instrument_engine, is_instrumented
from tests._pool import protocol_trace, sent_queries

pytestmark = pytest.mark.db


@pytest.fixture
def engine(conn: psycopg.Connection[Any], app_dsn: str) -> Iterator[Engine]:
    conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
    conn.execute("INSERT INTO notes VALUES (1, ''), (2, '')")
    conn.execute("GRANT SELECT, UPDATE ON notes TO audit_mw_test_app")
    track(conn, "notes")
    engine = create_engine(sqlalchemy_url(app_dsn), pool_size=1, max_overflow=0)
    instrument_engine(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def _trail(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT new_values->>'body', app_user_id, request_id FROM audit.events"
                        " WHERE kind = 'data' ORDER BY id").fetchall()


def test_a_user_bound_after_the_first_query_is_carried_in_the_same_transaction(
        engine: Engine, conn: psycopg.Connection[Any]) -> None:
    with audit_context(user_id="anonymous", request_id="r1"), engine.begin() as db:
        db.execute(text("SELECT body FROM notes WHERE id = 1"))   # "loads the user"
        set_user("alice")
        db.execute(text("UPDATE notes SET body = 'a' WHERE id = 1"))
        with audit_context(user_id="job:inner"):
            db.execute(text("UPDATE notes SET body = 'inner' WHERE id = 2"))
        db.execute(text("UPDATE notes SET body = 'b' WHERE id = 1"))
    assert _trail(conn) == [("a", "alice", "r1"), ("inner", "job:inner", "r1"),
                            ("b", "alice", "r1")]


def test_a_rollback_leaves_no_wrong_context_for_the_next_checkout(
        engine: Engine, conn: psycopg.Connection[Any]) -> None:
    with audit_context(user_id="alice", request_id="r1"), engine.connect() as db:
        db.execute(text("UPDATE notes SET body = 'lost' WHERE id = 1"))
        set_user("mallory")
        db.execute(text("UPDATE notes SET body = 'lost too' WHERE id = 1"))
        db.rollback()
    # Same pooled connection (pool_size=1), another request, then code with no context.
    with audit_context(user_id="bob", request_id="r2"), engine.begin() as db:
        db.execute(text("UPDATE notes SET body = 'bob' WHERE id = 1"))
    with engine.begin() as db:
        db.execute(text("UPDATE notes SET body = 'nobody' WHERE id = 2"))
    assert _trail(conn) == [("bob", "bob", "r2"), ("nobody", None, None)]


REQUEST = {"user_id": "alice", "client_ip": "192.0.2.1", "user_agent": "browser/1"}


def _begins_of_a_second_request(engine: Engine) -> list[str]:
    """Two requests of alice through the one pooled connection; the second's BEGIN messages."""
    with audit_context(request_id="r1", **REQUEST), engine.begin() as db:
        db.execute(text("UPDATE notes SET body = 'r1' WHERE id = 1"))
    with audit_context(request_id="r2", **REQUEST), engine.begin() as db:
        driver = db.connection.driver_connection
        assert isinstance(driver, psycopg.Connection)
        _, lines = protocol_trace(
            driver, lambda: db.execute(text("UPDATE notes SET body = 'r2' WHERE id = 1")))
    return [query for query in sent_queries(lines) if "BEGIN" in query]


def _full_trail(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT new_values->>'body', app_user_id, host(client_ip), user_agent, request_id"
        " FROM audit.events WHERE kind = 'data' ORDER BY id").fetchall()


EXPECTED = [("r1", "alice", "192.0.2.1", "browser/1", "r1"),
            ("r2", "alice", "192.0.2.1", "browser/1", "r2")]


def test_a_connection_back_from_the_pool_carries_only_what_differs(
        engine: Engine, conn: psycopg.Connection[Any]) -> None:
    # SQLAlchemy's own reset (ROLLBACK) cannot undo settings made at session level: the next
    # checkout's BEGIN carries the request id only.
    assert _begins_of_a_second_request(engine) == [
        '"BEGIN; SET LOCAL "audit"."request_id" = \'r2\'"']
    assert _full_trail(conn) == EXPECTED


@pytest.mark.parametrize("where", ["reset", "checkin"])
def test_a_listener_that_may_reset_settings_on_return_makes_it_send_everything(
        engine: Engine, conn: psycopg.Connection[Any], where: str) -> None:
    # SQLAlchemy's documented custom reset for PostgreSQL, added after instrument_engine.
    def reset_all(dbapi_connection: Any, *_: Any) -> None:
        dbapi_connection.rollback()
        dbapi_connection.execute("RESET ALL")
        dbapi_connection.commit()

    event.listen(engine, where, reset_all)
    begins = _begins_of_a_second_request(engine)
    assert len(begins) == 1
    assert begins[0].count("SET LOCAL") == 5
    assert _full_trail(conn) == EXPECTED


def test_only_psycopg_engines_are_accepted() -> None:
    engine = create_engine("sqlite://")
    with pytest.raises(ConfigurationError, match="psycopg 3 driver"):
        instrument_engine(engine)
    assert not is_instrumented(engine)
    engine.dispose()
