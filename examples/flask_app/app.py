"""The example shop on Flask (WSGI), audited end to end.

- ``WSGIAuditMiddleware`` binds user, client IP, request id and user agent per request; its
  ``user_resolver`` reads the session cookie, so the user is known before Flask runs;
- ``AuditPool`` hands that context to PostgreSQL on every checkout;
- logins, failed logins, logouts and role changes go through ``log_auth_event``;
- the admin routes are served at ``/audit`` through ``admin_wsgi_app``, for admins only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from http.cookies import SimpleCookie
from typing import Any

from audit_mw_examples.shop import Sessions, SessionUser, check_login, query
from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from starlette.requests import Request as StarletteRequest
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from audit_mw import AuthAction, WSGIAuditMiddleware, log_auth_event, log_event, set_user
from audit_mw.admin.wsgi import admin_wsgi_app
from audit_mw.pool import AuditPool

COOKIE = "shop_session"


def _cookie(environ: dict[str, Any]) -> str | None:
    jar: SimpleCookie = SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except Exception:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel else None


def _order(row: dict[str, Any]) -> dict[str, Any]:
    return {**row, "unit_price": str(row["unit_price"])}


def create_app(
    dsn: str, *, trusted_proxies: Iterable[str] = (), pool_size: int = 5
) -> Flask:
    """The shop, on the database ``dsn`` (prepared by ``shop.setup_database``).

    Call ``app.extensions["shop"].close()`` to close its pools.
    """
    app = Flask(__name__)
    pool: AuditPool[Any] = AuditPool(dsn, min_size=1, max_size=pool_size, name="shop",
                                     open=True)
    sessions = Sessions()

    def current_user() -> SessionUser | None:
        return sessions.get(_cookie(request.environ))

    def require_user() -> SessionUser:
        user = current_user()
        if user is None:
            abort(401)
        return user

    @app.post("/login")
    def login() -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        email, password = str(body.get("email", "")), str(body.get("password", ""))
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query("user_by_email"), {"email": email})
            row = cur.fetchone()
        failure = check_login(row, password)
        if failure is not None or row is None:
            log_auth_event(pool, AuthAction.LOGIN_FAILED, user_id=email, reason=failure)
            return jsonify(error="invalid email or password"), 401
        user = SessionUser(row["id"], row["email"], row["display_name"], row["role"])
        set_user(user.audit_id)
        log_auth_event(pool, AuthAction.LOGIN, user_id=user.audit_id)
        response = jsonify(user=user.audit_id, role=user.role)
        response.set_cookie(COOKIE, sessions.create(user), httponly=True, samesite="Strict")
        return response

    @app.post("/logout")
    def logout() -> ResponseReturnValue:
        user = require_user()
        sessions.drop(_cookie(request.environ))
        log_auth_event(pool, AuthAction.LOGOUT, user_id=user.audit_id)
        response = jsonify(ok=True)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/orders")
    def list_orders() -> ResponseReturnValue:
        me = require_user()
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query("list_orders"), {"user_id": me.id, "all": me.role == "admin"})
            rows = cur.fetchall()
        return jsonify(orders=[_order(r) for r in rows])

    @app.post("/orders")
    def create_order() -> ResponseReturnValue:
        me = require_user()
        body = request.get_json(silent=True) or {}
        try:
            quantity = int(body["quantity"])
            unit_price = Decimal(str(body["unit_price"]))
            item = str(body["item"])[:200]
        except (KeyError, ValueError, TypeError, InvalidOperation):
            return jsonify(error="expected item, quantity and unit_price"), 400
        if quantity <= 0 or unit_price < 0 or not item:
            return jsonify(error="quantity must be positive, unit_price not negative"), 400
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query("create_order"), {"user_id": me.id, "item": item,
                                                "quantity": quantity, "unit_price": unit_price})
            row = cur.fetchone()
        return jsonify(order=_order(row or {})), 201

    def change_order(order_id: int, name: str, **params: Any) -> ResponseReturnValue:
        me = require_user()
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query(name), {"id": order_id, "user_id": me.id,
                                      "all": me.role == "admin", **params})
            row = cur.fetchone()
        if row is None:
            return jsonify(error="no such open order"), 404
        return jsonify(order=_order(row))

    @app.patch("/orders/<int:order_id>")
    def update_order(order_id: int) -> ResponseReturnValue:
        body = request.get_json(silent=True) or {}
        try:
            quantity = int(body["quantity"])
        except (KeyError, ValueError, TypeError):
            return jsonify(error="expected quantity"), 400
        if quantity <= 0:
            return jsonify(error="quantity must be positive"), 400
        return change_order(order_id, "update_order", quantity=quantity)

    @app.post("/orders/<int:order_id>/cancel")
    def cancel_order(order_id: int) -> ResponseReturnValue:
        return change_order(order_id, "cancel_order")

    @app.post("/admin/users/<int:target>/role")
    def set_role(target: int) -> ResponseReturnValue:
        me = require_user()
        role = (request.get_json(silent=True) or {}).get("role")
        if role not in ("member", "admin"):
            return jsonify(error="role must be 'member' or 'admin'"), 400
        if me.role != "admin":
            log_event(pool, "privilege_escalation", resource_type="user",
                      resource_id=f"user:{target}", success=False, reason="not an admin",
                      metadata={"requested_role": role})
            return jsonify(error="admins only"), 403
        with pool.connection() as conn, conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query("set_role"), {"id": target, "role": role})
            row = cur.fetchone()
        if row is None:
            return jsonify(error="no such user"), 404
        action = AuthAction.ROLE_GRANTED if role == "admin" else AuthAction.ROLE_REVOKED
        log_auth_event(pool, action, user_id=f"user:{target}", actor_id=me.audit_id,
                       metadata={"role": role})
        return jsonify(user=f"user:{target}", role=role)

    @app.errorhandler(401)
    def unauthorised(_: Exception) -> ResponseReturnValue:
        return jsonify(error="log in first"), 401

    # The admin routes are ASGI; they get their own async pool on their own event loop.
    admin_pool: AsyncConnectionPool[Any] = AsyncConnectionPool(dsn, open=False, min_size=1,
                                                               max_size=2, name="shop-admin")

    def is_admin(admin_request: StarletteRequest) -> bool:
        environ = admin_request.scope.get("wsgi_environ") or {}
        user = sessions.get(_cookie(environ))
        return user is not None and user.role == "admin"

    admin = admin_wsgi_app(admin_pool, authorize=is_admin)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/audit": admin})  # type: ignore[method-assign]

    def resolve_user(environ: dict[str, Any]) -> str | None:
        user = sessions.get(_cookie(environ))
        return user.audit_id if user else None

    # Outermost: binds the context for the app and the admin routes alike.
    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, user_resolver=resolve_user, trusted_proxies=list(trusted_proxies))

    class Closer:
        def close(self) -> None:
            admin.run(admin_pool.close())
            admin.stop()
            pool.close()

    app.extensions["shop"] = Closer()
    return app


def from_env() -> Flask:
    """For ``flask --app 'audit_mw_examples.flask_app.app:from_env()' run``."""
    return create_app(os.environ["DATABASE_URL"])
