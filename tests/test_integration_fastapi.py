"""FastAPI + SQLAlchemy (async) under uvicorn: attribution, auth events, negative control."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import psycopg
import pytest
from audit_mw_examples.fastapi_sqlalchemy.app import SCHEMA, create_app, hash_password

from audit_mw.capture.tracking import track
from tests._orm_load import (
    PASSWORD,
    USERS,
    Outcome,
    check_attributed,
    check_unattributed,
    run_load,
)
from tests._serve import serve_asgi
from tests.conftest import APP_ROLE

pytestmark = [pytest.mark.db, pytest.mark.slow]

ORDERS = 50


def _prepare(dsn: str) -> list[str]:
    names = [f"user{i:03d}" for i in range(USERS)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA.encode())
        conn.execute(f"GRANT ALL ON ALL TABLES IN SCHEMA public TO {APP_ROLE};"
                     f"GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE}".encode())
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO app_users (username, password_hash) VALUES (%s, %s)",
                            [(n, hash_password(PASSWORD)) for n in names])
            cur.execute("INSERT INTO app_orders (note) SELECT '' FROM generate_series(1, %s)",
                        [ORDERS])
        track(conn, "app_orders")
        track(conn, "app_users")
    return names


async def _login(client: httpx.AsyncClient, username: str, password: str
                 ) -> tuple[int, dict[str, str], str]:
    response = await client.post("/login", json={"username": username, "password": password})
    if response.status_code != 200:
        return response.status_code, {}, ""
    body = response.json()
    return 200, {"authorization": f"Bearer {body['token']}"}, str(body["user_id"])


async def _write(client: httpx.AsyncClient, headers: dict[str, str], order: int,
                 note: str) -> int:
    response = await client.put(f"/orders/{order}", json={"note": note}, headers=headers)
    return response.status_code


def _load(dsn: str, app_dsn: str, *, audit: bool, rounds: int = 3) -> Outcome:
    names = _prepare(dsn)
    app = create_app(app_dsn, trusted_proxies=["127.0.0.1/32"], pool_size=10, audit=audit)
    with serve_asgi(app) as url:
        return run_load(url, dsn, "app_orders", _login, _write, usernames=names,
                        orders=ORDERS, rounds=rounds)


def test_no_wrong_user_or_ip_under_load(dsn: str, app_dsn: str) -> None:
    check_attributed(_load(dsn, app_dsn, audit=True), dsn)


def test_negative_control_without_the_integration(dsn: str, app_dsn: str) -> None:
    # AuditMiddleware and set_user alone do not reach SQLAlchemy's connections.
    check_unattributed(_load(dsn, app_dsn, audit=False, rounds=1))


def test_failed_login_survives_the_rollback(dsn: str, app_dsn: str) -> None:
    _prepare(dsn)
    app = create_app(app_dsn, trusted_proxies=["127.0.0.1/32"], pool_size=2,
                     events_pool_size=1)

    async def attempt(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            # More concurrent failures than either pool has connections: nothing deadlocks.
            responses = await asyncio.gather(*(
                client.post("/login", json={"username": "user007", "password": "wrong"},
                            headers={"x-forwarded-for": "203.0.113.7"})
                for _ in range(20)))
        return [r.status_code for r in responses]

    with serve_asgi(app) as url:
        assert asyncio.run(attempt(url)) == [401] * 20
    with psycopg.connect(dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT resource_id, success, host(client_ip) FROM audit.events"
            " WHERE kind = 'auth' AND action = 'login_failed'").fetchall()
        failed_logins = conn.execute(
            "SELECT failed_logins FROM app_users WHERE username = 'user007'").fetchone()
    assert rows == [("user007", False, "203.0.113.7")] * 20
    assert failed_logins == (0,)  # the request's transaction was rolled back
