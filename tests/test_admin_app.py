"""The admin routes over HTTP, against the real server: authorisation, filters, pages."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from ipaddress import ip_address, ip_network
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.routing import Mount

from audit_mw.admin import admin_app
from audit_mw.capture.tracking import track
from audit_mw.web.asgi import AuditMiddleware
from tests._admin import (
    KEY,
    SECRET,
    access_events,
    allow,
    anyio_backend,
    client,
    generate_events,
    insert_events,
    pool,
    reader_dsn,
)
from tests._db import set_context

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = [pytest.mark.db, pytest.mark.anyio]

ENDPOINTS = [
    "/events", "/events/1", "/records/orders/1",
    "/export?from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z", "/verify", "/openapi.json",
]


def deny(request: Any) -> bool:
    return False


async def deny_async(request: Any) -> bool:
    return False


def unauthenticated(request: Any) -> bool:
    raise HTTPException(401)


def broken(request: Any) -> bool:
    raise RuntimeError("the callback failed")


def truthy_but_not_true(request: Any) -> Any:
    return "yes"


@pytest.mark.parametrize(("authorize", "status"), [
    (None, 403), (deny, 403), (deny_async, 403), (unauthenticated, 401), (broken, 403),
    (truthy_but_not_true, 403),
])
async def test_refused_requests_get_no_audit_data_and_are_recorded(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any], authorize: Any, status: int
) -> None:
    insert_events(conn, [{"table_name": "orders", "record_id": "1", "app_user_id": "alice",
                          "new_values": json.dumps({"secret_marker": "s3cr3t"})}])
    app = admin_app(pool, authorize=authorize, export_key=KEY)
    async with client(app) as http:
        for path in ENDPOINTS:
            response = await http.get(path)
            assert response.status_code == status, path
            assert response.headers["content-type"] == "application/json"
            body = response.json()
            assert set(body) == {"error", "message"}
            assert "s3cr3t" not in response.text
            assert "alice" not in response.text
    refusals = [e for e in access_events(conn) if e["action"] == "audit_access_denied"]
    assert len(refusals) == len(ENDPOINTS)
    assert all(e["success"] is False and e["reason"] for e in refusals)
    assert [e["metadata"]["path"] for e in refusals] == [p.split("?")[0] for p in ENDPOINTS]


async def test_allowed_requests_are_served(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    (event_id,) = insert_events(conn, [{"table_name": "orders", "record_id": "1"}])
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        for path in [*ENDPOINTS[:1], f"/events/{event_id}", *ENDPOINTS[2:]]:
            response = await http.get(path)
            assert response.status_code == 200, (path, response.text)


async def test_authorize_sees_the_request(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    async def by_token(request: Any) -> bool:
        return bool(request.headers.get("authorization") == "Bearer auditor")

    app = admin_app(pool, authorize=by_token)
    async with client(app) as http:
        assert (await http.get("/events")).status_code == 403
        ok = await http.get("/events", headers={"authorization": "Bearer auditor"})
        assert ok.status_code == 200


async def test_filters_combine(conn: psycopg.Connection[Any],
                               pool: AsyncConnectionPool[Any]) -> None:
    rows: list[dict[str, Any]] = []
    for i in range(60):
        rows.append({
            "occurred_at": f"2024-03-{1 + i % 30:02d}T12:00:00Z",
            "table_name": ("orders", "users")[i % 2],
            "record_id": str(i % 7),
            "action": ("INSERT", "UPDATE", "DELETE")[i % 3],
            "app_user_id": ("alice", "bob", "carol")[i % 3 if i % 4 else 0],
            "client_ip": f"10.0.{i % 3}.1",
            "request_id": f"req-{i % 5}",
        })
    rows.append({"kind": "auth", "action": "login_failed", "success": False,
                 "app_user_id": "alice", "occurred_at": "2024-03-05T00:00:00Z"})
    insert_events(conn, rows)
    app = admin_app(pool, authorize=allow)

    cases: list[dict[str, str]] = [
        {"user_id": "alice"},
        {"user_id": "alice", "from": "2024-03-05T00:00:00Z", "to": "2024-03-20T00:00:00+00:00"},
        {"table": "orders", "action": "UPDATE"},
        {"table": "users", "record_id": "3"},
        {"kind": "auth", "success": "false"},
        {"kind": "data", "ip": "10.0.1.0/24"},
        {"ip": "10.0.2.1", "request_id": "req-2"},
        {"from": "2024-03-10T00:00:00+02:00", "to": "2024-04-01T00:00:00Z"},
        {"to": "2024-03-03T12:00:00Z"},
    ]
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        everything = cur.execute("SELECT * FROM audit.events ORDER BY id DESC").fetchall()

    def matches(event: dict[str, Any], case: dict[str, str]) -> bool:
        checks: dict[str, Callable[[str], bool]] = {
            "user_id": lambda v: event["app_user_id"] == v,
            "table": lambda v: event["table_name"] == v,
            "record_id": lambda v: event["record_id"] == v,
            "action": lambda v: event["action"] == v,
            "kind": lambda v: event["kind"] == v,
            "success": lambda v: event["success"] is (v == "true"),
            "request_id": lambda v: event["request_id"] == v,
            "ip": lambda v: event["client_ip"] is not None
                and ip_address(event["client_ip"]) in ip_network(v, strict=False),
            "from": lambda v: event["occurred_at"] >= datetime.fromisoformat(v),
            "to": lambda v: event["occurred_at"] < datetime.fromisoformat(v),
        }
        return all(checks[name](value) for name, value in case.items())

    async with client(app) as http:
        for case in cases:
            expected = [e["id"] for e in everything if matches(e, case)]
            assert expected, case  # every case selects something, and not everything
            assert len(expected) < len(everything), case
            response = await http.get("/events", params={**case, "limit": "200"})
            assert response.status_code == 200, (case, response.text)
            body = response.json()
            assert [e["id"] for e in body["events"]] == expected, case
            assert body["total"] == len(expected)
            assert body["total_exact"] is True
            assert body["next_cursor"] is None


async def test_pages_never_exceed_the_limit_and_cover_everything(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, 257)
    app = admin_app(pool, authorize=allow, cursor_secret=SECRET)
    async with client(app) as http:
        # Each query adds an access event: page by kind so the pages hold still.
        first = (await http.get("/events", params={"kind": "data"})).json()
        assert len(first["events"]) == 50
        assert (first["total"], first["page"], first["limit"]) == (257, 1, 50)
        by_page: list[int] = []
        for page in range(1, 5):
            body = (await http.get("/events", params={"limit": "70", "page": str(page),
                                                      "kind": "data"})).json()
            assert len(body["events"]) <= 70
            by_page += [e["id"] for e in body["events"]]
        assert by_page == sorted(by_page, reverse=True)
        assert len(set(by_page)) == 257

        by_cursor: list[int] = []
        params: dict[str, str] = {"limit": "200", "kind": "data"}
        pages = 0
        while True:
            body = (await http.get("/events", params=params)).json()
            pages += 1
            assert body["page"] == pages
            assert len(body["events"]) <= 200
            by_cursor += [e["id"] for e in body["events"]]
            if body["next_cursor"] is None:
                break
            params = {"limit": "200", "kind": "data", "cursor": body["next_cursor"]}
        assert by_cursor == by_page
        assert pages == 2


async def test_total_is_capped_and_says_so(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, 10_050, users=1)
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        body = (await http.get("/events", params={"user_id": "user0"})).json()
        assert (body["total"], body["total_exact"]) == (10_000, False)
        body = (await http.get("/events", params={"table": "orders"})).json()
        assert (body["total"], body["total_exact"]) == (3_350, True)
        deep = await http.get("/events", params={"page": "201"})
        assert deep.status_code == 400
        assert deep.json()["parameter"] == "page"
        assert "next_cursor" in deep.json()["message"]


async def test_record_history_oldest_first_with_changes(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, owner text, balance int)")
    track(conn, "accounts")
    set_context(conn, user_id="alice")
    conn.execute("INSERT INTO accounts VALUES (42, 'ann', 10), (43, 'bo', 5)")
    conn.execute("UPDATE accounts SET balance = 20 WHERE id = 42")
    set_context(conn, user_id="bob")
    conn.execute("UPDATE accounts SET owner = 'anne', balance = 30 WHERE id = 42")
    conn.execute("DELETE FROM accounts WHERE id = 42")
    app = admin_app(pool, authorize=allow, cursor_secret=SECRET)
    async with client(app) as http:
        body = (await http.get("/records/accounts/42")).json()
        steps = body["history"]
        assert [s["action"] for s in steps] == ["INSERT", "UPDATE", "UPDATE", "DELETE"]
        assert [s["app_user_id"] for s in steps] == ["alice", "alice", "bob", "bob"]
        assert steps[0]["changes"] == {"id": {"old": None, "new": 42},
                                       "owner": {"old": None, "new": "ann"},
                                       "balance": {"old": None, "new": 10}}
        assert steps[1]["changes"] == {"balance": {"old": 10, "new": 20}}
        assert steps[2]["changes"] == {"balance": {"old": 20, "new": 30},
                                       "owner": {"old": "ann", "new": "anne"}}
        assert steps[3]["changes"]["owner"] == {"old": "anne", "new": None}
        assert body["next_cursor"] is None
        assert (await http.get("/records/accounts/42", params={"schema": "public"})
                ).json()["history"] == steps
        assert (await http.get("/records/accounts/42", params={"schema": "other"})
                ).json()["history"] == []

        two = (await http.get("/records/accounts/42", params={"limit": "2"})).json()
        assert [s["id"] for s in two["history"]] == [s["id"] for s in steps[:2]]
        rest = (await http.get("/records/accounts/42", params={
            "limit": "2", "cursor": two["next_cursor"]})).json()
        assert [s["id"] for s in rest["history"]] == [s["id"] for s in steps[2:]]
        assert rest["page"] == 2
        # A cursor of one record does not page through another.
        other = await http.get("/records/accounts/43", params={"cursor": two["next_cursor"]})
        assert other.status_code == 400
        assert other.json()["parameter"] == "cursor"

        single = await http.get(f"/events/{steps[1]['id']}")
        assert single.json()["changed_fields"] == ["balance"]
        missing = await http.get("/events/999999")
        assert missing.status_code == 404
        assert missing.json()["error"] == "not_found"


BAD_INPUT = [
    ("/events?from=yesterday", "from"),
    ("/events?from=2024-01-01T00:00:00", "from"),  # no time zone
    ("/events?from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z", "from"),
    ("/events?page=-1", "page"),
    ("/events?page=abc", "page"),
    ("/events?page=0", "page"),
    ("/events?page=1.5", "page"),
    ("/events?limit=201", "limit"),
    ("/events?limit=0", "limit"),
    ("/events?limit=%EF%BC%91", "limit"),  # a full-width digit
    ("/events?limit=99999999999999999999999", "limit"),
    ("/events?colour=red", "colour"),
    ("/events?user_id=a&user_id=b", "user_id"),
    ("/events?user_id=", "user_id"),
    ("/events?user_id=" + "x" * 257, "user_id"),
    ("/events?record_id=" + "x" * 5000, "record_id"),
    ("/events?user_id=a%00b", "user_id"),
    ("/events?kind=everything", "kind"),
    ("/events?success=maybe", "success"),
    ("/events?ip=10.0.0.300", "ip"),
    ("/events?ip=1'%20OR%201=1--", "ip"),
    ("/events?cursor=forged", "cursor"),
    ("/events?cursor=eyJkIjoiIiwiaSI6MSwicCI6MiwidCI6MH0.AAAAAAAAAAAAAAAAAAAAAA", "cursor"),
    ("/events?cursor=x&page=2", "page"),
    ("/events/abc", "id"),
    ("/events/0", "id"),
    ("/events/99999999999999999999", "id"),
    ("/events/1?x=1", "x"),
    ("/records/orders/1?limit=500", "limit"),
    ("/records/orders/1?table=x", "table"),
    ("/export?from=2024-01-01T00:00:00Z", "to"),
    ("/export?to=2024-01-01T00:00:00Z", "from"),
    ("/export?from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z&format=xlsx", "format"),
    ("/export?from=2025-01-01T00:00:00Z&to=2024-01-01T00:00:00Z", "from"),
    ("/verify?deep=1", "deep"),
]


async def test_bad_input_is_a_400_naming_the_parameter(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        for path, parameter in BAD_INPUT:
            response = await http.get(path)
            assert response.status_code == 400, (path, response.text)
            body = response.json()
            assert body["error"] == "bad_request"
            assert body["parameter"] == parameter, path
            assert body["message"]
            for leak in ("SELECT", "audit.events", "Traceback", "psycopg"):
                assert leak not in response.text
    # Refused input is not an access: nothing was read.
    assert access_events(conn) == []


INJECTIONS = [
    "'; DROP TABLE audit.events; --", "1' OR '1'='1", "\" OR 1=1 --", "$$; SELECT 1; $$",
    "x\\' UNION SELECT * FROM pg_authid --",
]


async def test_sql_injection_strings_are_just_values(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    for value in INJECTIONS:
        insert_events(conn, [{"app_user_id": value, "table_name": value, "record_id": value}])
    insert_events(conn, [{"app_user_id": "someone", "table_name": "t", "record_id": "1"}])
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        for value in INJECTIONS:
            for name in ("user_id", "table", "record_id", "action", "request_id"):
                response = await http.get("/events", params={name: value, "kind": "data"})
                assert response.status_code == 200
                expected = 0 if name in ("action", "request_id") else 1
                assert response.json()["total"] == expected, (name, value)
            history = await http.get(f"/records/{quote(value, safe='')}/{quote(value)}")
            assert history.status_code == 200
            assert [e["record_id"] for e in history.json()["history"]] == [value]
    assert conn.execute("SELECT count(*) FROM audit.events WHERE kind = 'data'"
                        ).fetchone() == (len(INJECTIONS) + 1,)


async def test_queries_are_recorded_with_filters_and_row_counts(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, 30)
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        await http.get("/events", params={"user_id": "user3", "limit": "5"},
                       headers={"user-agent": "auditor-browser"})
        await http.get("/records/orders/3")
        await http.get("/events/1")
        await http.get("/verify")
        await http.get("/events", params={"limit": "nope"})  # refused input: no access
    accesses = [e for e in access_events(conn) if e["action"] == "audit_queried"]
    assert [e["metadata"]["endpoint"] for e in accesses] == ["events", "records", "event",
                                                             "verify"]
    first = accesses[0]
    assert first["metadata"]["filters"] == {"user_id": "user3"}
    assert first["metadata"]["rows"] == 1  # ids 3 and 53.. only 3 of 30 events
    assert first["user_agent"] == "auditor-browser"
    assert first["client_ip"] is not None
    assert first["success"] is True
    assert first["app_user_id"] == "anonymous"  # no user on a bare test request
    assert accesses[1]["metadata"] == {"endpoint": "records", "page": 1, "limit": 200,
                                       "filters": {"table": "orders", "record_id": "3"},
                                       "rows": 1}
    assert accesses[2]["metadata"]["rows"] == 1


async def test_access_is_attributed_to_the_authenticated_user(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    class HeaderAuth(AuthenticationBackend):
        async def authenticate(self, conn: Any) -> Any:
            name = conn.headers.get("x-user")
            return (AuthCredentials(["auditor"]), SimpleUser(name)) if name else None

    def auditors_only(request: Any) -> bool:
        return "auditor" in request.auth.scopes

    outer = Starlette(
        routes=[Mount("/audit", admin_app(pool, authorize=auditors_only))],
        middleware=[Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
                    Middleware(AuditMiddleware)],
    )
    async with client(outer) as http:
        assert (await http.get("/audit/events", headers={"x-user": "ada",
                                                         "x-request-id": "rq-77"})
                ).status_code == 200
        assert (await http.get("/audit/events")).status_code == 403
        spec = (await http.get("/audit/openapi.json", headers={"x-user": "ada"})).json()
        assert spec["servers"] == [{"url": "/audit"}]
    events = access_events(conn)
    assert [(e["action"], e["app_user_id"]) for e in events] == [
        ("audit_queried", "ada"), ("audit_access_denied", "anonymous")]
    assert events[0]["request_id"] == "rq-77"


async def test_unrecordable_access_serves_nothing(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [{"app_user_id": "alice", "new_values": json.dumps({"k": "hidden"})}])
    conn.execute("REVOKE audit_writer FROM audit_mw_test_admin")
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        for path in ("/events", "/events/1", "/records/orders/1", "/verify",
                     "/export?from=2024-01-01T00:00:00Z&to=2030-01-01T00:00:00Z"):
            response = await http.get(path)
            assert response.status_code == 503, path
            assert "hidden" not in response.text
            assert "permission" not in response.text


async def test_verify_reports_position_without_scanning(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, 12)
    latest = conn.execute("SELECT max(id) FROM audit.events").fetchone()
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        body = (await http.get("/verify")).json()
    assert latest is not None
    assert body["latest_event_id"] == latest[0]
    assert body["unsealed_backlog_max"] >= 12
    assert set(body) == {"integrity_installed", "latest_event_id", "sealed_position",
                         "unsealed_backlog_max", "checkpoint", "last_verification"}


async def test_non_get_methods_and_unknown_paths(pool: AsyncConnectionPool[Any]) -> None:
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        post = await http.post("/events")
        assert post.status_code == 405
        assert post.json()["error"] == "method_not_allowed"
        assert (await http.get("/nothing")).json()["error"] == "not_found"


def test_admin_app_needs_an_async_pool() -> None:
    with pytest.raises(TypeError, match="AsyncConnectionPool"):
        admin_app(object())  # type: ignore[arg-type]
