"""Application events against the real server: the function, isolation, redaction, logs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import structlog
from psycopg import sql
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from audit_mw.cli import main
from audit_mw.context import audit_context
from audit_mw.errors import ConfigurationError, EventWriteError
from audit_mw.events import (
    AuthAction,
    EventSettings,
    alog_access,
    alog_auth_event,
    alog_event,
    areplay,
    log_access,
    log_auth_event,
    log_event,
    replay,
)
from audit_mw.events.spool import Spool
from audit_mw.web.asgi import AuditMiddleware
from tests._events import (
    canary_metadata,
    captured_json_log,
    free_text_with_canaries,
    hits,
    log_records,
)

pytestmark = pytest.mark.db

#: A database nobody listens on: every connection attempt is refused at once.
DEAD_DSN = "host=127.0.0.1 port=1 connect_timeout=1"

CALL = sql.SQL(
    "SELECT * FROM audit.log_event(%(id)s, %(kind)s, %(action)s, true, NULL, %(user)s,"
    " %(ip)s, NULL, %(ua)s, NULL, NULL, NULL, %(meta)s::jsonb)"
)


def call_params(**overrides: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"id": uuid.uuid4(), "kind": "admin", "action": "config_changed",
                              "user": "bob", "ip": None, "ua": None, "meta": None}
    params.update(overrides)
    return params


def app_events(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute("SELECT * FROM audit.events WHERE kind <> 'data' ORDER BY id")
        return cur.fetchall()


def whole_trail(conn: psycopg.Connection[Any]) -> str:
    row = conn.execute("SELECT coalesce(json_agg(e)::text, '') FROM audit.events AS e").fetchone()
    assert row is not None
    return str(row[0])


# --- the SQL function --------------------------------------------------------------------


def test_the_app_role_may_call_the_function_but_not_insert(
    app_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        row = app.execute(CALL, call_params()).fetchone()
        assert row is not None
        assert row[2] is True
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            app.execute("INSERT INTO audit.events (kind, action) VALUES ('auth', 'login')")
    # PUBLIC may not execute it: a role without audit_writer is refused.
    conn.execute("DROP ROLE IF EXISTS audit_mw_test_stranger")
    conn.execute("CREATE ROLE audit_mw_test_stranger")
    try:
        conn.execute("GRANT USAGE ON SCHEMA audit TO audit_mw_test_stranger")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE audit_mw_test_stranger")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(CALL, call_params())
    finally:
        conn.execute("REVOKE USAGE ON SCHEMA audit FROM audit_mw_test_stranger")
        conn.execute("DROP ROLE audit_mw_test_stranger")
    status = conn.execute(
        "SELECT p.prosecdef, p.proconfig FROM pg_proc p WHERE p.oid ="
        " 'audit.log_event(uuid,text,text,boolean,text,text,text,text,text,jsonb,text,text,jsonb)'"
        "::regprocedure").fetchone()
    assert status == (True, ["search_path=pg_catalog, pg_temp"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"kind": "data"}, "cannot be recorded"),
        ({"kind": None}, "cannot be recorded"),
        ({"action": "Robert'); DROP TABLE x;--"}, "action"),
        ({"action": None}, "action"),
        ({"id": None}, "event_id"),
    ],
)
def test_the_function_refuses_forgeries_and_garbage(
    app_dsn: str, overrides: dict[str, Any], message: str
) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app, pytest.raises(
        psycopg.Error, match=message
    ):
        app.execute(CALL, call_params(**overrides))


def test_the_function_caps_and_validates(app_dsn: str, conn: psycopg.Connection[Any]) -> None:
    with psycopg.connect(app_dsn, autocommit=True) as app:
        app.execute(CALL, call_params(user="u" * 300, ip="999.1.1.1", ua="a" * 600,
                                      meta="[1, 2]"))
        app.execute(CALL, call_params(ip="2001:db8::1", meta='{"k": "v"}'))
    capped, fine = app_events(conn)
    assert len(capped["app_user_id"]) == 256
    assert capped["client_ip"] is None
    assert len(capped["user_agent"]) == 512
    assert capped["metadata"] is None
    assert capped["context_issues"] == ["user_id_truncated", "client_ip_invalid",
                                        "user_agent_truncated", "metadata_invalid"]
    assert str(fine["client_ip"]) == "2001:db8::1"
    assert fine["metadata"] == {"k": "v"}
    assert fine["context_issues"] is None
    assert fine["db_role"] == "audit_mw_test_app"


def test_event_time_is_database_time(app_dsn: str) -> None:
    with psycopg.connect(app_dsn) as app:
        # The function takes no time at all; the row gets the statement's own timestamp.
        row = app.execute(
            sql.SQL("SELECT e.stored_at = statement_timestamp(), e.stored_at <> clock_timestamp()"
                    " FROM ({}) AS e").format(CALL),
            call_params(),
        ).fetchone()
        assert row == (True, True)
        args = app.execute(
            "SELECT array_agg(format_type(t, NULL)) FROM pg_proc p, unnest(p.proargtypes) t"
            " WHERE p.proname = 'log_event' AND p.pronamespace = 'audit'::regnamespace"
        ).fetchone()
        assert args is not None
        assert not any("time" in name for name in args[0])


def test_the_event_id_is_unique_and_retries_are_idempotent(
    app_dsn: str, dsn: str, conn: psycopg.Connection[Any]
) -> None:
    event_id = uuid.uuid4()
    with ConnectionPool(app_dsn, min_size=1) as pool:
        first = log_auth_event(pool, "login", user_id="alice", event_id=event_id)
        again = log_auth_event(pool, "login", user_id="alice", event_id=event_id)
        assert first.created
        assert not again.created
        assert (again.id, again.occurred_at) == (first.id, first.occurred_at)
        # The same id for a different event is a bug, and loud.
        with pytest.raises(EventWriteError, match="already used by a different event"):
            log_auth_event(pool, "logout", user_id="alice", event_id=event_id)
    assert len(app_events(conn)) == 1
    # Even the owner cannot insert a second row with that id.
    with pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute("INSERT INTO audit.events (kind, action, event_id) VALUES ('auth', 'x', %s)",
                     [event_id])


# --- isolation: own transaction by default -------------------------------------------------


class Unauthorized(Exception):
    pass


def test_a_failed_login_survives_the_rollback_of_the_request(
    app_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    conn.execute("CREATE TABLE accounts (name text PRIMARY KEY, failures int NOT NULL)")
    conn.execute("INSERT INTO accounts VALUES ('alice', 0)")
    conn.execute("GRANT SELECT, UPDATE ON accounts TO audit_mw_test_app")

    def login(pool: ConnectionPool[Any], name: str, password: str) -> None:
        with pool.connection() as db, db.transaction():
            db.execute("UPDATE accounts SET failures = failures + 1 WHERE name = %s", [name])
            log_auth_event(pool, AuthAction.LOGIN_FAILED, user_id=name, reason="bad_password",
                           metadata={"password": password})
            raise Unauthorized

    with ConnectionPool(app_dsn, min_size=2) as pool, pytest.raises(Unauthorized):
        login(pool, "alice", "hunter2-guess")
    assert conn.execute("SELECT failures FROM accounts").fetchone() == (0,)  # rolled back
    (event,) = app_events(conn)
    assert (event["kind"], event["action"], event["success"], event["reason"]) == (
        "auth", "login_failed", False, "bad_password")
    assert (event["resource_type"], event["resource_id"]) == ("user", "alice")
    assert event["metadata"] == {"password": "[redacted]"}


def test_in_transaction_is_atomic_with_the_business_change(
    app_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    with psycopg.connect(app_dsn) as app:
        with app.transaction():
            log_event(app, "config_changed", resource_type="setting", resource_id="kept",
                      in_transaction=True)
        with app.transaction(force_rollback=True):
            log_event(app, "config_changed", resource_type="setting", resource_id="gone",
                      in_transaction=True)
        # Inside a transaction without in_transaction=True: refused, loudly.
        with app.transaction(), pytest.raises(ConfigurationError, match="rollback"):
            log_auth_event(app, "login", user_id="alice")
        # An idle connection gets its own transaction; a later rollback cannot touch it.
        log_auth_event(app, "logout", user_id="alice")
        app.execute("SELECT 1")
        app.rollback()
    with ConnectionPool(app_dsn, min_size=1) as pool, pytest.raises(
        ConfigurationError, match="not a pool"
    ):
        log_event(pool, "x", in_transaction=True)
    assert [(e["action"], e["resource_id"]) for e in app_events(conn)] == [
        ("config_changed", "kept"), ("logout", "alice")]
    with pytest.raises(ConfigurationError, match="not str"):
        log_event("dsn", "x")  # type: ignore[arg-type]  # the point of the test


# --- the request, redaction and the log -----------------------------------------------------


def starlette_app(pool: AsyncConnectionPool[Any]) -> Starlette:
    async def login(request: Request) -> JSONResponse:
        form = await request.json()
        async with pool.connection() as db, db.transaction():
            await db.execute("SELECT 1")  # the request's own work
            if form["password"] != "right":
                await alog_auth_event(pool, "login_failed", user_id=form["username"],
                                      reason="bad_password", request=request,
                                      metadata={"password": form["password"]})
                # The handler gives up: its transaction rolls back, the event stays.
                return JSONResponse({"ok": False}, status_code=401)
        await alog_auth_event(pool, "login", user_id=form["username"], request=request)
        return JSONResponse({"ok": True})

    return Starlette(routes=[Route("/login", login, methods=["POST"])],
                     middleware=[_middleware()])


def _middleware() -> Any:
    from starlette.middleware import Middleware  # noqa: PLC0415

    return Middleware(AuditMiddleware, trusted_proxies=["10.0.0.0/8"])


def test_starlette_login_takes_ip_request_id_and_agent_from_the_request(
    app_dsn: str, conn: psycopg.Connection[Any]
) -> None:
    import httpx  # noqa: PLC0415

    async def go() -> list[int]:
        # Two connections: the handler holds one while the event takes another.
        async with AsyncConnectionPool(app_dsn, min_size=1, max_size=2, open=False) as pool:
            transport = httpx.ASGITransport(app=starlette_app(pool), client=("10.0.0.2", 999))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
                statuses = []
                for password in ("wrong", "right"):
                    response = await http.post(
                        "/login", json={"username": "alice", "password": password},
                        headers={"x-forwarded-for": "198.51.100.23",
                                 "x-request-id": f"r-{password}", "user-agent": "pytest-agent"})
                    statuses.append(response.status_code)
                return statuses

    assert asyncio.run(go()) == [401, 200]
    failed, ok = app_events(conn)
    assert (failed["action"], failed["success"], failed["app_user_id"]) == (
        "login_failed", False, "anonymous")
    assert (ok["action"], ok["success"], ok["app_user_id"]) == ("login", True, "alice")
    for event, request_id in ((failed, "r-wrong"), (ok, "r-right")):
        assert str(event["client_ip"]) == "198.51.100.23"  # resolved behind the trusted proxy
        assert event["request_id"] == request_id
        assert event["user_agent"] == "pytest-agent"
        assert event["resource_id"] == "alice"
    assert failed["metadata"] == {"password": "[redacted]"}


def test_canary_secrets_never_reach_the_trail_the_spool_or_the_log(
    app_dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    text = free_text_with_canaries()
    environ = {"REQUEST_METHOD": "POST", "REMOTE_ADDR": "192.0.2.1", "HTTP_USER_AGENT": text}
    spool = Spool(tmp_path / "spool.jsonl")
    with captured_json_log() as log:
        with ConnectionPool(app_dsn, min_size=1) as pool:
            log_auth_event(pool, "login_failed", user_id=text, reason=text, request=environ,
                           metadata=canary_metadata())
            log_event(pool, "user_updated", resource_type="user", resource_id=text,
                      reason=text, metadata={"nested": canary_metadata()})
            log_access(pool, "card", text, fields=["pan"], reason=text,
                       metadata={"query": text, "rows": [canary_metadata()]})
        # And while the database is unreachable, into the spool.
        dead = ConnectionPool(DEAD_DSN, min_size=0, max_size=1, open=True)
        try:
            spooled = log_auth_event(dead, "login_failed", user_id=text, reason=text,
                                     metadata=canary_metadata(),
                                     settings=EventSettings(spool=spool, timeout=0.2))
            assert spooled.spooled
            with pytest.raises(EventWriteError):
                log_event(dead, "user_updated", reason=text, metadata=canary_metadata(),
                          settings=EventSettings(timeout=0.2))
        finally:
            dead.close()
    output = log.getvalue()
    assert len(log_records(log)) == 5
    assert hits(output) == []
    assert hits(spool.path.read_text()) == []
    trail = whole_trail(conn)
    assert trail.count('"kind" : "') == 3 or trail.count('"kind":"') == 3
    assert hits(trail) == []
    assert "[redacted:card]" in trail


INJECTIONS = [
    'alice\r\n{"event":"audit_mw.event","app_user_id":"admin","success":true}',
    "bob\n2024-01-01 INFO forged line",
    "\x1b[2J\x1b[1;31mcarol\x1b[0m",
    "dave\u2028next\u2029para",
    'eve"}{"forged":true,"x":"',
    "frank\x00\x7f\x85\u202etxt.exe",
    "\\u000a\\r\\n literal escapes",
]


@pytest.mark.parametrize("payload", INJECTIONS)
def test_log_injection_gives_exactly_one_json_line_per_event(
    app_dsn: str, conn: psycopg.Connection[Any], payload: str
) -> None:
    scope = {"type": "http", "client": ("192.0.2.1", 1),
             "headers": [(b"user-agent", payload.encode("utf-8", "replace"))]}
    with captured_json_log() as log, ConnectionPool(app_dsn, min_size=1) as pool:
        log_auth_event(pool, "login_failed", user_id=payload, request=scope,
                       metadata={"note": payload, payload: "key"})
        with audit_context(user_id="anonymous", user_agent=payload.replace("\x00", "")):
            log_auth_event(pool, "login", user_id=payload)
    lines = log.getvalue().split("\n")
    assert lines[-1] == ""
    records = log_records(log)
    assert len(records) == len(lines) - 1 == 2
    for record in records:
        assert record["event"] == "audit_mw.event"
        assert record["kind"] == "auth"
        assert "forged" not in record
        assert record["resource_id"].isprintable()
        assert record["user_agent"].isprintable()
        assert "\x1b" not in record["user_agent"]
    for event in app_events(conn):
        for column in ("resource_id", "user_agent", "app_user_id"):
            if event[column] is not None:
                assert event[column].isprintable()
        assert all(key.isprintable() for key in event["metadata"] or {})


# --- async forms and replay through the CLI --------------------------------------------


def test_async_forms_with_a_pool_and_a_connection(
    app_dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    spool = Spool(tmp_path / "spool.jsonl")

    async def go() -> None:
        settings = EventSettings(spool=spool, timeout=0.2)
        dead = AsyncConnectionPool(DEAD_DSN, min_size=0, max_size=1, open=False)
        await dead.open()
        try:
            result = await alog_event(dead, "config_changed", resource_type="flag",
                                      resource_id="spooled", settings=settings)
            assert result.spooled
            with pytest.raises(EventWriteError, match="config_changed"):
                await alog_event(dead, "config_changed", settings=EventSettings(timeout=0.2))
        finally:
            await dead.close()
        async with AsyncConnectionPool(app_dsn, min_size=1, open=False) as pool:
            stored = await alog_auth_event(pool, "mfa_failed", user_id="alice",
                                           settings=settings)
            assert stored.stored
            assert not stored.created or stored.id is not None
        assert not spool.has_pending()  # the successful write replayed the spool
        async with await psycopg.AsyncConnection.connect(app_dsn) as aconn:
            await alog_access(aconn, "patient", 7, fields=["diagnosis"], record_count=1)
            async with aconn.transaction():
                await alog_event(aconn, "user_deleted", resource_type="user", resource_id="z",
                                 in_transaction=True)
            again = await areplay(aconn, spool)
            assert (again.stored, again.pending) == (0, 0)

    asyncio.run(go())
    assert [(e["kind"], e["action"], e["resource_id"]) for e in app_events(conn)] == [
        ("auth", "mfa_failed", "alice"), ("admin", "config_changed", "spooled"),
        ("access", "read", "7"), ("admin", "user_deleted", "z")]
    spooled = app_events(conn)[1]
    assert "audit_mw.spooled_at" in spooled["context_extra"]
    assert app_events(conn)[2]["metadata"] == {"fields": ["diagnosis"], "record_count": 1}


@pytest.fixture
def structlog_restored() -> Iterator[None]:
    """structlog as it was: ``audit-mw replay`` configures it to the (captured) stderr, which
    later tests must not write to once the capture is closed."""
    yield
    structlog.reset_defaults()


@pytest.mark.usefixtures("structlog_restored")
def test_replay_command(app_dsn: str, conn: psycopg.Connection[Any], tmp_path: Path,
                        capsys: pytest.CaptureFixture[str]) -> None:
    spool = Spool(tmp_path / "spool.jsonl")
    settings = EventSettings(spool=spool, timeout=0.2)
    with ConnectionPool(DEAD_DSN, min_size=0, max_size=1) as dead:
        for n in range(3):
            assert log_event(dead, "config_changed", resource_id=n, settings=settings).spooled
    capsys.readouterr()
    spool.append("not json")  # a damaged line is set aside, not lost and not fatal
    with captured_json_log() as log:
        assert main(["--dsn", app_dsn, "replay", "--spool", str(spool.path), "--json"]) == 0
    assert [r["event"] for r in log_records(log)] == ["audit_mw.spool_line_rejected",
                                                     "audit_mw.spool_replayed"]
    report = json.loads(capsys.readouterr().out)
    assert (report["stored"], report["rejected"], report["pending"]) == (3, 1, 0)
    assert spool.rejected_path.read_text() == "not json\n"
    assert main(["--dsn", app_dsn, "replay", "--spool", str(spool.path)]) == 0
    assert "0 stored" in capsys.readouterr().out
    assert main(["--dsn", app_dsn, "replay"]) == 2
    assert "no spool given" in capsys.readouterr().err
    assert [e["resource_id"] for e in app_events(conn)] == ["0", "1", "2"]
    with psycopg.connect(app_dsn, autocommit=True) as app:
        assert replay(app, spool).stored == 0
