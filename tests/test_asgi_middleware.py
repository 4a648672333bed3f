"""AuditMiddleware: a Starlette app over httpx's ASGI transport, and direct ASGI calls."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    SimpleUser,
    UnauthenticatedUser,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from audit_mw.context import AuditContext, current, set_user
from audit_mw.errors import ConfigurationError
from audit_mw.web.asgi import AuditMiddleware, Message, Receive, Scope, Send, user_from_scope
from audit_mw.web.proxy import TrustedProxies
from tests.test_proxy import PROXY_CASES, ProxyCase

PEER = ("203.0.113.9", 50000)
EMPTY = AuditContext()


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def snapshot() -> dict[str, Any]:
    context = current()
    return {
        "user_id": context.user_id,
        "client_ip": context.client_ip,
        "request_id": context.request_id,
        "user_agent": context.user_agent,
        "log": structlog.contextvars.get_contextvars(),
    }


class HeaderAuth(AuthenticationBackend):
    """Logs in whoever the x-user header names; enough to exercise the middleware order."""

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, BaseUser] | None:
        name = conn.headers.get("x-user")
        return None if name is None else (AuthCredentials(["authenticated"]), SimpleUser(name))


class Spy:
    """Sits inside AuditMiddleware and records the context each time the app sends."""

    def __init__(self, app: Any, records: list[tuple[str, AuditContext]]) -> None:
        self.app = app
        self.records = records

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def spying_send(message: Message) -> None:
            self.records.append((message["type"], current()))
            await send(message)

        await self.app(scope, receive, spying_send)
        self.records.append(("returned", current()))


async def whoami(request: Request) -> Response:
    return JSONResponse(snapshot())


async def login_async(request: Request) -> Response:
    set_user("alice")
    return JSONResponse(snapshot())


def login_sync(request: Request) -> Response:  # Starlette runs it in a thread pool
    set_user("bob")
    return JSONResponse(snapshot())


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def own_header(request: Request) -> Response:
    return PlainTextResponse("ok", headers={"X-Request-ID": "app-chosen"})


async def ws_whoami(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(snapshot())
    await websocket.close()


ROUTES = [
    Route("/whoami", whoami),
    Route("/login-async", login_async),
    Route("/login-sync", login_sync),
    Route("/boom", boom),
    Route("/own-header", own_header),
    WebSocketRoute("/ws", ws_whoami),
]


def make_app(
    records: list[tuple[str, AuditContext]] | None = None,
    *,
    audit_outside_auth: bool = False,
    **options: Any,
) -> Starlette:
    auth = Middleware(AuthenticationMiddleware, backend=HeaderAuth())
    audit = Middleware(AuditMiddleware, **options)
    order = [audit, auth] if audit_outside_auth else [auth, audit]
    spy = [Middleware(Spy, records=records)] if records is not None else []
    return Starlette(routes=ROUTES, middleware=[*order, *spy])


def get(
    app: Any,
    path: str,
    headers: dict[str, str] | None = None,
    client: tuple[str, int] = PEER,
) -> httpx.Response:
    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            return await http.get(path, headers=headers)

    return asyncio.run(go())


async def call(app: Any, scope: Scope, incoming: list[Message]) -> list[Message]:
    """Call an ASGI app directly; what it sends is returned."""
    queue = list(incoming)
    sent: list[Message] = []

    async def receive() -> Message:
        if queue:
            return queue.pop(0)
        disconnect = "websocket.disconnect" if scope["type"] == "websocket" else "http.disconnect"
        return {"type": disconnect}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


def http_scope(
    path: str = "/",
    headers: list[tuple[bytes, bytes]] | None = None,
    client: tuple[str, int] | None = PEER,
    scope_type: str = "http",
) -> Scope:
    return {
        "type": scope_type,
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http" if scope_type == "http" else "ws",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": headers or [],
        "client": client,
        "server": ("test", 80),
    }


REQUEST = [{"type": "http.request", "body": b"", "more_body": False}]


async def ok_app(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


# --- user ------------------------------------------------------------------------------


def test_authenticated_user_is_recorded() -> None:
    body = get(make_app(), "/whoami", headers={"x-user": "carol"}).json()
    assert body["user_id"] == "carol"
    assert body["log"]["user_id"] == "carol"


def test_unauthenticated_request_is_anonymous() -> None:
    assert get(make_app(), "/whoami").json()["user_id"] == "anonymous"


def test_audit_outside_authentication_cannot_see_the_user() -> None:
    # The documented order matters: outside AuthenticationMiddleware, scope["user"] is
    # not set yet when the context is built.
    app = make_app(audit_outside_auth=True)
    assert get(app, "/whoami", headers={"x-user": "carol"}).json()["user_id"] == "anonymous"


def test_custom_user_resolver() -> None:
    app = make_app(user_resolver=lambda scope: "svc:" + scope["path"].strip("/"))
    assert get(app, "/whoami").json()["user_id"] == "svc:whoami"


def test_user_from_scope() -> None:
    class DisplayOnly(BaseUser):
        is_authenticated = True
        display_name = "dora"

    class Nameless(BaseUser):
        is_authenticated = True
        display_name = ""

    assert user_from_scope({"user": SimpleUser("sam")}) == "sam"
    assert user_from_scope({"user": DisplayOnly()}) == "dora"  # identity not implemented
    assert user_from_scope({"user": UnauthenticatedUser()}) is None
    assert user_from_scope({}) is None
    with pytest.raises(ConfigurationError, match="Nameless has no identity or display_name"):
        user_from_scope({"user": Nameless()})


@pytest.mark.parametrize(("path", "user"), [("/login-async", "alice"), ("/login-sync", "bob")])
def test_set_user_is_seen_for_the_rest_of_the_request(path: str, user: str) -> None:
    records: list[tuple[str, AuditContext]] = []
    body = get(make_app(records), path).json()
    assert body["user_id"] == user
    # The middleware stack around the endpoint sees the login on every later step, for
    # async endpoints and for sync ones run in a thread pool.
    assert [(kind, context.user_id) for kind, context in records] == [
        ("http.response.start", user),
        ("http.response.body", user),
        ("returned", user),
    ]


# --- client IP ---------------------------------------------------------------------------


def test_spoofed_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    body = get(make_app(), "/whoami", headers={"x-forwarded-for": "1.1.1.1"}).json()
    assert body["client_ip"] == PEER[0]
    assert body["log"]["client_ip"] == PEER[0]


def test_client_behind_a_trusted_proxy() -> None:
    app = make_app(trusted_proxies=["10.0.0.0/8"])
    headers = {"x-forwarded-for": "1.1.1.1, 198.51.100.4, 10.0.0.3"}
    assert get(app, "/whoami", headers, client=("10.0.0.2", 1)).json()["client_ip"] == (
        "198.51.100.4"
    )


@pytest.mark.parametrize("case", PROXY_CASES, ids=lambda case: case.id)
def test_proxy_table(case: ProxyCase) -> None:
    seen: list[AuditContext] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current())
        await ok_app(scope, receive, send)

    middleware = AuditMiddleware(app, trusted_proxies=case.trusted, forwarded_header=case.header)
    headers = [(name.lower().encode(), value.encode("latin-1")) for name, value in case.headers]
    client = (case.peer, 1234) if case.peer is not None else None
    asyncio.run(call(middleware, http_scope(headers=headers, client=client), REQUEST))
    assert [context.client_ip for context in seen] == [case.expected]


# --- request id -------------------------------------------------------------------------


def test_request_id_is_accepted_and_echoed() -> None:
    response = get(make_app(), "/whoami", headers={"x-request-id": "req-42.a:b"})
    assert response.json()["request_id"] == "req-42.a:b"
    assert response.json()["log"]["request_id"] == "req-42.a:b"
    assert response.headers.get_list("x-request-id") == ["req-42.a:b"]


@pytest.mark.parametrize("incoming", [None, "has space", "x" * 129, "semi;colon", "tab\there"])
def test_request_id_is_generated_when_missing_or_malformed(incoming: str | None) -> None:
    headers = {} if incoming is None else {"x-request-id": incoming}
    response = get(make_app(), "/whoami", headers=headers)
    request_id = response.json()["request_id"]
    assert request_id != incoming
    assert len(request_id) == 32
    assert int(request_id, 16) >= 0
    assert response.headers.get_list("x-request-id") == [request_id]


def test_non_ascii_request_id_is_replaced() -> None:
    seen: list[AuditContext] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current())
        await ok_app(scope, receive, send)

    middleware = AuditMiddleware(app, generate_request_id=lambda: "gen-2")
    scope = http_scope(headers=[(b"x-request-id", "café".encode())])
    asyncio.run(call(middleware, scope, REQUEST))
    assert [context.request_id for context in seen] == ["gen-2"]


def test_request_ids_differ_per_request() -> None:
    app = make_app()
    ids = {get(app, "/whoami").json()["request_id"] for _ in range(5)}
    assert len(ids) == 5


def test_untrusted_request_id_is_replaced() -> None:
    app = make_app(trust_request_id=False, generate_request_id=lambda: "ours")
    response = get(app, "/whoami", headers={"x-request-id": "theirs"})
    assert response.json()["request_id"] == "ours"
    assert response.headers["x-request-id"] == "ours"


def test_custom_request_id_header_and_no_echo() -> None:
    app = make_app(request_id_header="X-Correlation-ID", echo_request_id=False)
    response = get(app, "/whoami", headers={"x-correlation-id": "corr-1"})
    assert response.json()["request_id"] == "corr-1"
    assert "x-correlation-id" not in response.headers
    assert "x-request-id" not in response.headers


def test_echo_does_not_duplicate_a_header_the_app_set() -> None:
    response = get(make_app(), "/own-header", headers={"x-request-id": "ours"})
    assert response.headers.get_list("x-request-id") == ["app-chosen"]


def test_echo_does_not_mutate_the_apps_header_list() -> None:
    shared_headers = [(b"content-type", b"text/plain")]

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": shared_headers})
        await send({"type": "http.response.body", "body": b""})

    middleware = AuditMiddleware(app, generate_request_id=lambda: "gen-1")
    sent = asyncio.run(call(middleware, http_scope(), REQUEST))
    assert sent[0]["headers"] == [(b"content-type", b"text/plain"), (b"x-request-id", b"gen-1")]
    assert shared_headers == [(b"content-type", b"text/plain")]


def test_bad_generated_request_id_is_a_configuration_error() -> None:
    middleware = AuditMiddleware(ok_app, generate_request_id=lambda: "not valid")
    with pytest.raises(ConfigurationError, match="generate_request_id returned 'not valid'"):
        asyncio.run(call(middleware, http_scope(), REQUEST))


# --- user agent ---------------------------------------------------------------------------


def test_user_agent_is_capped() -> None:
    agent = "Mozilla/5.0 " + "x" * 2000
    assert get(make_app(), "/whoami", {"user-agent": agent}).json()["user_agent"] == agent[:512]
    short = make_app(user_agent_max=7)
    assert get(short, "/whoami", {"user-agent": agent}).json()["user_agent"] == "Mozilla"
    assert get(make_app(user_agent_max=0), "/whoami").json()["user_agent"] is None


# --- lifetime of the binding -----------------------------------------------------------------


def test_context_and_structlog_are_reset_after_an_exception() -> None:
    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        assert current().request_id == "r-1"
        raise RuntimeError("boom")

    async def main() -> tuple[AuditContext, dict[str, Any]]:
        structlog.contextvars.bind_contextvars(request_id="outer")
        middleware = AuditMiddleware(failing)
        with pytest.raises(RuntimeError, match="boom"):
            await call(middleware, http_scope(headers=[(b"x-request-id", b"r-1")]), REQUEST)
        return current(), structlog.contextvars.get_contextvars()

    after, log = asyncio.run(main())
    assert after == EMPTY
    assert log == {"request_id": "outer"}  # the value from before the request is back


def test_starlette_app_exception_resets_the_context() -> None:
    app = make_app()

    async def main() -> AuditContext:
        with pytest.raises(RuntimeError, match="boom"):
            await call(app, http_scope("/boom"), REQUEST)
        return current()

    assert asyncio.run(main()) == EMPTY


def test_context_is_reset_on_cancellation() -> None:
    started = asyncio.Event()

    async def slow(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.sleep(3600)

    after: list[tuple[AuditContext, dict[str, Any]]] = []

    async def handler() -> None:
        try:
            await call(AuditMiddleware(slow), http_scope(), REQUEST)
        except asyncio.CancelledError:
            after.append((current(), structlog.contextvars.get_contextvars()))
            raise

    async def main() -> None:
        task = asyncio.create_task(handler())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert after == [(EMPTY, {})]


def test_structlog_binding_is_optional() -> None:
    body = get(make_app(bind_structlog=False), "/whoami", headers={"x-user": "carol"}).json()
    assert body["user_id"] == "carol"
    assert body["log"] == {}


# --- other scopes -------------------------------------------------------------------------------


def test_lifespan_passes_straight_through() -> None:
    calls: list[tuple[Scope, Receive, Send, AuditContext]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        calls.append((scope, receive, send, current()))

    async def receive() -> Message:
        return {"type": "lifespan.startup"}

    async def send(message: Message) -> None:
        return None

    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    asyncio.run(AuditMiddleware(app)(scope, receive, send))
    assert calls == [(scope, receive, send, EMPTY)]


def test_lifespan_through_a_starlette_app() -> None:
    scope: Scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = asyncio.run(call(make_app(), scope, incoming))
    assert [message["type"] for message in sent] == [
        "lifespan.startup.complete",
        "lifespan.shutdown.complete",
    ]


def test_websocket() -> None:
    headers = [(b"x-request-id", b"ws-1"), (b"x-user", b"wendy")]
    scope = http_scope("/ws", headers=headers, scope_type="websocket")
    sent = asyncio.run(call(make_app(), scope, [{"type": "websocket.connect"}]))
    assert [message["type"] for message in sent] == [
        "websocket.accept",
        "websocket.send",
        "websocket.close",
    ]
    assert (b"x-request-id", b"ws-1") in sent[0]["headers"]
    body = json.loads(sent[1]["text"])
    assert body["user_id"] == "wendy"
    assert body["client_ip"] == PEER[0]
    assert body["request_id"] == "ws-1"


# --- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"trusted_proxies": ["10.0.0.0/33"]}, "not an IP address or CIDR network"),
        ({"trusted_proxies": ["*"]}, "every client"),
        ({"forwarded_header": "x-real-ip"}, "unknown forwarding header"),
        ({"request_id_header": "bad header"}, "not a header name"),
        ({"user_agent_max": 513}, "user_agent_max must be an int from 0 to 512"),
        ({"generate_request_id": "nope"}, "must be a callable"),
        (
            {"trusted_proxies": TrustedProxies(["10.0.0.0/8"]), "forwarded_header": "forwarded"},
            "disagrees",
        ),
    ],
)
def test_bad_options_fail_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        AuditMiddleware(ok_app, **options)


# --- why not BaseHTTPMiddleware -------------------------------------------------------------------


async def login_and_log(request: Request) -> Response:
    # What a login handler does so that the rest of the request logs the user.
    structlog.contextvars.bind_contextvars(user_id="alice")
    return PlainTextResponse("ok")


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="BaseHTTPMiddleware runs the app in another task: contextvars the endpoint"
    " sets never come back to the middleware",
)
def test_base_http_middleware_loses_what_the_endpoint_binds() -> None:
    seen: list[object] = []

    class LogAfter(BaseHTTPMiddleware):
        async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
            response = await call_next(request)
            seen.append(structlog.contextvars.get_contextvars().get("user_id"))
            return response

    app = Starlette(routes=[Route("/", login_and_log)], middleware=[Middleware(LogAfter)])
    assert get(app, "/").text == "ok"
    assert seen == ["alice"]


def test_pure_asgi_middleware_sees_what_the_endpoint_binds() -> None:
    seen: list[object] = []

    class LogAfter:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
            await self.app(scope, receive, send)
            if scope["type"] == "http":
                seen.append(structlog.contextvars.get_contextvars().get("user_id"))

    app = Starlette(routes=[Route("/", login_and_log)], middleware=[Middleware(LogAfter)])
    assert get(app, "/").text == "ok"
    assert seen == ["alice"]
