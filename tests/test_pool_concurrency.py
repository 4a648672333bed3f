"""Attribution under load: many users, many requests in flight, few pooled connections.

Each request writes rows that carry, as data, the request id and user the *client* chose;
the trail's user and request id come from the pool. For every captured row both must agree
with what the client sent under that request id: any mix-up between requests shows.
"""

# ruff: noqa: S311  # random timings and users, not secrets

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio.from_thread
import flask
import httpx
import psycopg
import pytest
from starlette.applications import Starlette
from starlette.authentication import AuthCredentials, AuthenticationBackend, SimpleUser
from starlette.background import BackgroundTask
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route

from audit_mw.pool import AsyncAuditPool, AuditPool
from audit_mw.web.asgi import AuditMiddleware
from audit_mw.web.wsgi import WSGIAuditMiddleware
from tests._pool import create_notes, note_events
from tests._serve import serve_wsgi

pytestmark = [pytest.mark.db, pytest.mark.slow]

Conn = psycopg.Connection[Any]
INSERT = "INSERT INTO notes (author, request_id, body) VALUES (%s, %s, %s)"
REQUESTS = 2000
USERS = 200
IN_FLIGHT = 100
KINDS = ("async", "sync", "background", "stream")


class HeaderAuth(AuthenticationBackend):
    async def authenticate(
        self, conn: HTTPConnection
    ) -> tuple[AuthCredentials, SimpleUser] | None:
        user = conn.headers.get("x-user")
        return (AuthCredentials(["authenticated"]), SimpleUser(user)) if user else None


def plan(seed: int) -> list[dict[str, Any]]:
    """The requests to send: who, which kind of endpoint, how many writes; 1 in 10 anonymous."""
    rng = random.Random(seed)
    return [
        {
            "request_id": f"r-{uuid.uuid4().hex}",
            "user": None if rng.random() < 0.1 else f"user-{rng.randrange(USERS)}",
            "kind": KINDS[i % len(KINDS)],
            "writes": rng.randint(1, 3),
        }
        for i in range(REQUESTS)
    ]


def check_attribution(conn: Conn, sent: list[dict[str, Any]]) -> None:
    by_request = {r["request_id"]: r for r in sent}
    events = note_events(conn)
    assert len(events) == sum(r["writes"] for r in sent)
    mismatches = [
        e for e in events
        if e["request_id"] != e["row_request_id"]
        or e["app_user_id"] != (by_request[e["row_request_id"]]["user"] or "anonymous")
        or e["author"] != (by_request[e["row_request_id"]]["user"] or "anonymous")
    ]
    assert mismatches == []
    assert not [e for e in events if e["app_user_id"] is None]
    # Every kind of endpoint really ran, with every number of writes.
    assert {e["body"] for e in events} == {f"{kind}-{n}" for kind in KINDS for n in range(3)}


# -- Starlette on AsyncAuditPool ---------------------------------------------------------


def starlette_app(pool: AsyncAuditPool) -> Starlette:
    async def write(request_id: str, author: str, kind: str, count: int) -> None:
        for n in range(count):
            # A checkout per write, random awaits between: the connections change hands.
            async with pool.connection() as conn:
                await conn.execute(INSERT, [author, request_id, f"{kind}-{n}"])
            await asyncio.sleep(random.random() * 0.005)

    def facts(request: Request) -> tuple[str, str, int]:
        author = request.user.username if request.user.is_authenticated else "anonymous"
        return request.headers["x-request-id"], author, int(request.query_params["writes"])

    async def async_endpoint(request: Request) -> Response:
        request_id, author, count = facts(request)
        await write(request_id, author, "async", count)
        return PlainTextResponse("ok")

    def sync_endpoint(request: Request) -> Response:
        # Runs in Starlette's thread pool, and reaches the event loop's pool from there.
        request_id, author, count = facts(request)
        time.sleep(random.random() * 0.002)
        anyio.from_thread.run(write, request_id, author, "sync", count)
        return PlainTextResponse("ok")

    async def background_endpoint(request: Request) -> Response:
        request_id, author, count = facts(request)
        return PlainTextResponse(
            "ok", background=BackgroundTask(write, request_id, author, "background", count))

    async def stream_endpoint(request: Request) -> Response:
        request_id, author, count = facts(request)

        async def body() -> AsyncIterator[bytes]:
            for n in range(count):
                yield b"chunk "
                async with pool.connection() as conn:
                    await conn.execute(INSERT, [author, request_id, f"stream-{n}"])
                await asyncio.sleep(random.random() * 0.005)

        return StreamingResponse(body())

    return Starlette(
        routes=[
            Route("/async", async_endpoint, methods=["POST"]),
            Route("/sync", sync_endpoint, methods=["POST"]),
            Route("/background", background_endpoint, methods=["POST"]),
            Route("/stream", stream_endpoint, methods=["POST"]),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=HeaderAuth()),
            Middleware(AuditMiddleware),
        ],
    )


async def send_all(client: httpx.AsyncClient, sent: list[dict[str, Any]]) -> None:
    limit = asyncio.Semaphore(IN_FLIGHT)

    async def one(request: dict[str, Any]) -> None:
        headers = {"x-request-id": request["request_id"]}
        if request["user"]:
            headers["x-user"] = request["user"]
        async with limit:
            response = await client.post(
                f"/{request['kind']}", params={"writes": request["writes"]}, headers=headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-request-id"] == request["request_id"]

    async with asyncio.TaskGroup() as group:
        for request in sent:
            group.create_task(one(request))


def test_starlette_on_async_pool_attributes_every_row(app_dsn: str, conn: Conn) -> None:
    create_notes(conn, grant_to="audit_mw_test_app")
    sent = plan(seed=1)

    async def main() -> None:
        async with AsyncAuditPool(app_dsn, min_size=5, max_size=5, open=False,
                                  timeout=60) as pool:
            transport = httpx.ASGITransport(app=starlette_app(pool))
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                await send_all(client, sent)

    asyncio.run(main())
    check_attribution(conn, sent)


# -- Flask under a threaded WSGI server, on AuditPool ------------------------------------


def flask_app(pool: AuditPool) -> flask.Flask:
    app = flask.Flask(__name__)

    def write(kind: str, n: int) -> None:
        request_id = flask.request.headers["x-request-id"]
        author = flask.request.headers.get("x-user", "anonymous")
        with pool.connection() as conn:
            conn.execute(INSERT, [author, request_id, f"{kind}-{n}"])

    @app.post("/<kind>")
    def endpoint(kind: str) -> Any:
        count = int(flask.request.args["writes"])
        if kind == "stream":
            def body() -> Iterator[str]:
                for n in range(count):
                    yield "chunk "
                    write("stream", n)
                    time.sleep(random.random() * 0.003)

            return flask.Response(flask.stream_with_context(body()))
        for n in range(count):
            write(kind, n)
            time.sleep(random.random() * 0.003)
        return "ok"

    def user_from_header(environ: Any) -> str | None:
        return environ.get("HTTP_X_USER") or None

    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, user_resolver=user_from_header)
    return app


@pytest.fixture
def wsgi_server(app_dsn: str) -> Iterator[str]:
    with AuditPool(app_dsn, min_size=5, max_size=5, timeout=60) as pool, \
            serve_wsgi(flask_app(pool)) as url:
        yield url


def test_flask_on_threaded_server_and_pool_attributes_every_row(
    conn: Conn, app_dsn: str, wsgi_server: str
) -> None:
    create_notes(conn, grant_to="audit_mw_test_app")
    # "background" stands for a plain endpoint here: WSGI has no background tasks.
    sent = plan(seed=2)
    limits = httpx.Limits(max_connections=IN_FLIGHT, max_keepalive_connections=IN_FLIGHT)

    async def main() -> None:
        async with httpx.AsyncClient(base_url=wsgi_server, limits=limits, timeout=60) as client:
            await send_all(client, sent)

    asyncio.run(main())
    check_attribution(conn, sent)
