"""The example shop on Starlette, audited end to end.

- ``AuthenticationMiddleware`` (outer) resolves the user from the session cookie;
  ``AuditMiddleware`` (inner) binds user, client IP, request id and user agent per request;
- ``AsyncAuditPool`` hands that context to PostgreSQL on every checkout, so the triggers on
  ``users`` and ``orders`` attribute every change;
- logins, failed logins, logouts and role changes go through ``alog_auth_event``;
- the admin routes are mounted at ``/audit``, for admins only.

Run it with ``audit-mw demo``, or ``uvicorn --factory audit_mw_examples.starlette_app.app:from_env``
with ``DATABASE_URL`` pointing at a database prepared by ``shop.setup_database``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any
from urllib.parse import parse_qsl

from audit_mw_examples.shop import Sessions, SessionUser, check_login, query
from psycopg.rows import dict_row
from starlette.applications import Starlette
from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    SimpleUser,
    requires,
)
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from audit_mw import AuditMiddleware, AuthAction, alog_auth_event, alog_event, set_user
from audit_mw.admin import admin_app
from audit_mw.pool import AsyncAuditPool

COOKIE = "shop_session"
FORM = "application/x-www-form-urlencoded"
#: Where a browser goes after logging in through the form: the audit viewer.
VIEWER = "/audit/ui/"

LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Log in to the example shop</title></head>
<body><main><h1>Log in to the example shop</h1>{message}
<form method="post" action="login">
<p><label for="email">Email</label><br><input id="email" name="email" type="email" required></p>
<p><label for="password">Password</label><br>
<input id="password" name="password" type="password" required></p>
<p><button type="submit">Log in</button></p>
</form><p>Admins go on to the audit viewer.</p></main></body></html>
"""


class ShopUser(SimpleUser):
    """Starlette's user, carrying the shop's own record; ``identity`` is the audit id."""

    def __init__(self, user: SessionUser) -> None:
        super().__init__(user.email)
        self.record = user

    @property
    def identity(self) -> str:
        return str(self.record.audit_id)


class SessionBackend(AuthenticationBackend):
    def __init__(self, sessions: Sessions) -> None:
        self.sessions = sessions

    async def authenticate(self, conn: HTTPConnection) -> tuple[AuthCredentials, ShopUser] | None:
        user = self.sessions.get(conn.cookies.get(COOKIE))
        if user is None:
            return None
        scopes = ["authenticated", "admin"] if user.role == "admin" else ["authenticated"]
        return AuthCredentials(scopes), ShopUser(user)


def _bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=400)


async def _json(request: Request) -> dict[str, Any]:
    if request.headers.get("content-type", "").startswith(FORM):
        return dict(parse_qsl((await request.body()).decode(errors="replace")))
    try:
        body = await request.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _order(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "unit_price": str(row["unit_price"])}


def create_app(
    dsn: str, *, trusted_proxies: Iterable[str] = (), pool_size: int = 5
) -> Starlette:
    """The shop, on the database ``dsn`` (prepared by ``shop.setup_database``)."""
    pool: AsyncAuditPool[Any] = AsyncAuditPool(dsn, open=False, min_size=1, max_size=pool_size,
                                               name="shop")
    sessions = Sessions()

    async def login_page(request: Request) -> Response:
        return HTMLResponse(LOGIN_PAGE.format(message=""))

    async def login(request: Request) -> Response:
        # JSON for API clients; the form of GET /login for a browser (then a redirect).
        browser = request.headers.get("content-type", "").startswith(FORM)
        body = await _json(request)
        email, password = str(body.get("email", "")), str(body.get("password", ""))
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("user_by_email"), {"email": email})
            row = await cur.fetchone()
        failure = check_login(row, password)
        if failure is not None or row is None:
            await alog_auth_event(pool, AuthAction.LOGIN_FAILED, user_id=email, reason=failure)
            if browser:
                return HTMLResponse(LOGIN_PAGE.format(
                    message="<p role=alert>Invalid email or password.</p>"), status_code=401)
            return JSONResponse({"error": "invalid email or password"}, status_code=401)
        user = SessionUser(row["id"], row["email"], row["display_name"], row["role"])
        set_user(user.audit_id)  # the rest of this request acts as the new user
        await alog_auth_event(pool, AuthAction.LOGIN, user_id=user.audit_id)
        response: Response = JSONResponse({"user": user.audit_id, "role": user.role})
        if browser:
            response = RedirectResponse(VIEWER if user.role == "admin" else "/", status_code=303)
        response.set_cookie(COOKIE, sessions.create(user), httponly=True, samesite="strict")
        return response

    @requires("authenticated")
    async def logout(request: Request) -> Response:
        sessions.drop(request.cookies.get(COOKIE))
        await alog_auth_event(pool, AuthAction.LOGOUT, user_id=request.user.identity)
        response = JSONResponse({"ok": True})
        response.delete_cookie(COOKIE)
        return response

    @requires("authenticated")
    async def list_orders(request: Request) -> Response:
        me: SessionUser = request.user.record
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("list_orders"), {"user_id": me.id, "all": me.role == "admin"})
            rows = await cur.fetchall()
        return JSONResponse({"orders": [_order(r) for r in rows]})

    @requires("authenticated")
    async def create_order(request: Request) -> Response:
        body = await _json(request)
        try:
            quantity = int(body["quantity"])
            unit_price = Decimal(str(body["unit_price"]))
            item = str(body["item"])[:200]
        except (KeyError, ValueError, TypeError, InvalidOperation):
            return _bad_request("expected item, quantity and unit_price")
        if quantity <= 0 or unit_price < 0 or not item:
            return _bad_request("quantity must be positive, unit_price not negative")
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("create_order"), {
                "user_id": request.user.record.id, "item": item, "quantity": quantity,
                "unit_price": unit_price})
            row = await cur.fetchone()
        assert row is not None  # noqa: S101 - INSERT ... RETURNING returns the row
        return JSONResponse({"order": _order(row)}, status_code=201)

    async def _change_order(request: Request, name: str, **params: Any) -> Response:
        me: SessionUser = request.user.record
        try:
            order_id = int(request.path_params["id"])
        except ValueError:
            return _bad_request("order id must be a number")
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query(name), {"id": order_id, "user_id": me.id,
                                            "all": me.role == "admin", **params})
            row = await cur.fetchone()
        if row is None:
            return JSONResponse({"error": "no such open order"}, status_code=404)
        return JSONResponse({"order": _order(row)})

    @requires("authenticated")
    async def update_order(request: Request) -> Response:
        body = await _json(request)
        try:
            quantity = int(body["quantity"])
        except (KeyError, ValueError, TypeError):
            return _bad_request("expected quantity")
        if quantity <= 0:
            return _bad_request("quantity must be positive")
        return await _change_order(request, "update_order", quantity=quantity)

    @requires("authenticated")
    async def cancel_order(request: Request) -> Response:
        return await _change_order(request, "cancel_order")

    @requires("authenticated")
    async def set_role(request: Request) -> Response:
        me: SessionUser = request.user.record
        body = await _json(request)
        role = body.get("role")
        try:
            target = int(request.path_params["id"])
        except ValueError:
            return _bad_request("user id must be a number")
        if role not in ("member", "admin"):
            return _bad_request("role must be 'member' or 'admin'")
        if "admin" not in request.auth.scopes:
            # Refused privilege changes are security events too.
            await alog_event(pool, "privilege_escalation", resource_type="user",
                             resource_id=f"user:{target}", success=False,
                             reason="not an admin", metadata={"requested_role": role})
            return JSONResponse({"error": "admins only"}, status_code=403)
        async with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            await cur.execute(query("set_role"), {"id": target, "role": role})
            row = await cur.fetchone()
        if row is None:
            return JSONResponse({"error": "no such user"}, status_code=404)
        action = AuthAction.ROLE_GRANTED if role == "admin" else AuthAction.ROLE_REVOKED
        await alog_auth_event(pool, action, user_id=f"user:{target}", actor_id=me.audit_id,
                              metadata={"role": role})
        return JSONResponse({"user": f"user:{target}", "role": role})

    async def index(request: Request) -> Response:
        return JSONResponse({
            "shop": "audit_mw example",
            "you": request.user.identity if request.user.is_authenticated else "anonymous",
            "endpoints": ["GET /login (a form)", "POST /login", "POST /logout", "GET /orders",
                          "POST /orders", "PATCH /orders/{id}", "POST /orders/{id}/cancel",
                          "POST /admin/users/{id}/role", "GET /audit/events (admins)",
                          "GET /audit/ui/ (admins: the audit viewer)"],
        })

    def is_admin(request: Request) -> bool:
        return "admin" in request.auth.scopes

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await pool.open(wait=True)
        try:
            yield
        finally:
            await pool.close()

    return Starlette(
        routes=[
            Route("/", index, methods=["GET"]),
            Route("/login", login_page, methods=["GET"]),
            Route("/login", login, methods=["POST"]),
            Route("/logout", logout, methods=["POST"]),
            Route("/orders", list_orders, methods=["GET"]),
            Route("/orders", create_order, methods=["POST"]),
            Route("/orders/{id}", update_order, methods=["PATCH"]),
            Route("/orders/{id}/cancel", cancel_order, methods=["POST"]),
            Route("/admin/users/{id}/role", set_role, methods=["POST"]),
            Mount("/audit", admin_app(pool, authorize=is_admin)),
        ],
        middleware=[
            Middleware(AuthenticationMiddleware, backend=SessionBackend(sessions)),
            Middleware(AuditMiddleware, trusted_proxies=list(trusted_proxies)),
        ],
        lifespan=lifespan,
    )


def from_env() -> Starlette:
    """For ``uvicorn --factory``: the shop on ``$DATABASE_URL``."""
    return create_app(os.environ["DATABASE_URL"])
