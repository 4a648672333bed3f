"""Flask + Flask-SQLAlchemy + Flask-Login under a threaded WSGI server."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from flask import Flask
from flask_login import LoginManager

from audit_mw.errors import ConfigurationError
from audit_mw.integrations.flask_login import init_audit
from tests._flask_orm_app import create_app
from tests._orm_load import (
    Outcome,
    check_attributed,
    check_unattributed,
    run_load,
)
from tests._serve import serve_wsgi
from tests.test_integration_fastapi import ORDERS, _prepare, _write

pytestmark = [pytest.mark.db, pytest.mark.slow]


async def _login(client: httpx.AsyncClient, username: str, password: str
                 ) -> tuple[int, dict[str, str], str]:
    response = await client.post("/login", json={"username": username, "password": password})
    if response.status_code != 200:
        return response.status_code, {}, ""
    cookie = response.cookies["session"]
    return 200, {"cookie": f"session={cookie}"}, str(response.json()["user_id"])


def _load(dsn: str, app_dsn: str, *, audit: bool, rounds: int = 3) -> Outcome:
    names = _prepare(dsn)
    app, close = create_app(app_dsn, audit=audit)
    try:
        with serve_wsgi(app) as url:
            return run_load(url, dsn, "app_orders", _login, _write, usernames=names,
                            orders=ORDERS, rounds=rounds)
    finally:
        close()


def test_no_wrong_user_or_ip_under_load(dsn: str, app_dsn: str) -> None:
    check_attributed(_load(dsn, app_dsn, audit=True), dsn)


def test_negative_control_without_the_integration(dsn: str, app_dsn: str) -> None:
    check_unattributed(_load(dsn, app_dsn, audit=False, rounds=1))


def test_failed_login_survives_the_rollback(dsn: str, app_dsn: str) -> None:
    _prepare(dsn)
    app, close = create_app(app_dsn, pool_size=2, events_pool_size=1)

    async def attempt(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            responses = await asyncio.gather(*(
                client.post("/login", json={"username": "user007", "password": "wrong"},
                            headers={"x-forwarded-for": "203.0.113.7"})
                for _ in range(20)))
        return [r.status_code for r in responses]

    try:
        with serve_wsgi(app) as url:
            assert asyncio.run(attempt(url)) == [401] * 20
    finally:
        close()
    with psycopg.connect(dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT resource_id, success, host(client_ip) FROM audit.events"
            " WHERE kind = 'auth' AND action = 'login_failed'").fetchall()
        failed_logins = conn.execute(
            "SELECT failed_logins FROM app_users WHERE username = 'user007'").fetchone()
    assert rows == [("user007", False, "203.0.113.7")] * 20
    assert failed_logins == (0,)



def test_a_flask_login_without_the_hook_is_a_clear_error() -> None:
    class Changed(LoginManager):  # a Flask-Login whose private hook was renamed
        _update_request_context_with_user = None  # type: ignore[assignment]

    with pytest.raises(ConfigurationError, match=r"supports Flask-Login 0\.6"):
        init_audit(Changed(), Flask(__name__))
