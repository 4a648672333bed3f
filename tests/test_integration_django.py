"""Django over real HTTP: WSGI with persistent connections, ASGI with Django's pool."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from audit_mw.capture.tracking import track
from tests._orm_load import (
    PASSWORD,
    USERS,
    Outcome,
    check_attributed,
    check_unattributed,
    run_load,
)
from tests.conftest import APP_ROLE

pytestmark = [pytest.mark.db, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
ORDERS = 50
TABLE = "orders_order"


@contextmanager
def django_server(app_dsn: str, mode: str, *, pool: bool, audit: bool = True
                  ) -> Iterator[str]:
    """The Django example served by a subprocess; yields its base URL."""
    env = dict(os.environ, DATABASE_URL=app_dsn, TRUSTED_PROXIES="127.0.0.1/32",
               DJANGO_DB_POOL="1" if pool else "0", AUDIT_INTEGRATION="1" if audit else "0",
               DJANGO_FAST_HASHER="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, "-m", "tests._django_server", mode],
                               cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("PORT "), f"the Django server did not start: {line!r}"
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        process.terminate()
        process.wait(30)
        if process.stdout is not None:
            process.stdout.close()


def _md5_hash(password: str) -> str:
    salt = secrets.token_hex(6)
    return f"md5${salt}${hashlib.md5((salt + password).encode()).hexdigest()}"  # noqa: S324


def _seed(dsn: str) -> list[str]:
    """Users (MD5 hashes: the test settings' hasher) and orders; track the orders."""
    names = [f"user{i:03d}" for i in range(USERS)]
    with psycopg.connect(dsn, autocommit=True) as conn:
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO auth_user (password, is_superuser, username, first_name,"
                " last_name, email, is_staff, is_active, date_joined)"
                " VALUES (%s, false, %s, '', '', '', false, true, now())",
                [(_md5_hash(PASSWORD), n) for n in names])
            cur.execute("INSERT INTO orders_order (note) SELECT '' FROM generate_series(1, %s)",
                        [ORDERS])
        track(conn, TABLE)
    return names


def _grant(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"GRANT CREATE ON SCHEMA public TO {APP_ROLE}".encode())


def _login_at(path: str) -> Any:
    async def login(client: httpx.AsyncClient, username: str, password: str
                    ) -> tuple[int, dict[str, str], str]:
        response = await client.post(path, json={"username": username, "password": password})
        if response.status_code != 200:
            return response.status_code, {}, ""
        return (200, {"cookie": f"sessionid={response.cookies['sessionid']}"},
                str(response.json()["user_id"]))
    return login


def _write_at(prefix: str) -> Any:
    async def write(client: httpx.AsyncClient, headers: dict[str, str], order: int,
                    note: str) -> int:
        response = await client.put(f"{prefix}/{order}", json={"note": note}, headers=headers)
        return response.status_code
    return write


def _load(dsn: str, app_dsn: str, mode: str, *, pool: bool, audit: bool = True,
          rounds: int = 3, asynchronous: bool = False) -> Outcome:
    _grant(dsn)
    with django_server(app_dsn, mode, pool=pool, audit=audit) as url:
        names = _seed(dsn)
        prefix = "/a" if asynchronous else "/"
        return run_load(url, dsn, TABLE, _login_at(f"{prefix}login"),
                        _write_at(f"{prefix}orders"), usernames=names, orders=ORDERS,
                        rounds=rounds)


def test_wsgi_persistent_connections(dsn: str, app_dsn: str) -> None:
    check_attributed(_load(dsn, app_dsn, "wsgi", pool=False), dsn)


def test_asgi_with_djangos_pool(dsn: str, app_dsn: str) -> None:
    check_attributed(_load(dsn, app_dsn, "asgi", pool=True, asynchronous=True), dsn)


def test_asgi_sync_views(dsn: str, app_dsn: str) -> None:
    # One round: sync views run in Django's one thread for sync code under ASGI.
    check_attributed(_load(dsn, app_dsn, "asgi", pool=True, rounds=1), dsn, requests=250)


def test_wsgi_async_views(dsn: str, app_dsn: str) -> None:
    check_attributed(_load(dsn, app_dsn, "wsgi", pool=False, rounds=1, asynchronous=True),
                     dsn, requests=250)


def test_wsgi_negative_control(dsn: str, app_dsn: str) -> None:
    # WSGIAuditMiddleware alone: Django's connections never carry the context.
    check_unattributed(_load(dsn, app_dsn, "wsgi", pool=False, audit=False, rounds=1))


def test_asgi_negative_control(dsn: str, app_dsn: str) -> None:
    check_unattributed(_load(dsn, app_dsn, "asgi", pool=True, audit=False, rounds=1,
                             asynchronous=True))


@pytest.mark.parametrize(("mode", "pool", "path"),
                         [("wsgi", False, "/login"), ("asgi", True, "/alogin")])
def test_failed_login_survives_the_rollback(dsn: str, app_dsn: str, mode: str, pool: bool,
                                            path: str) -> None:
    _grant(dsn)

    async def attempt(url: str) -> list[int]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            responses = await asyncio.gather(*(
                client.post(path, json={"username": "user007", "password": "wrong"},
                            headers={"x-forwarded-for": "203.0.113.7"})
                for _ in range(20)))
        return [r.status_code for r in responses]

    with django_server(app_dsn, mode, pool=pool) as url:
        _seed(dsn)
        assert asyncio.run(attempt(url)) == [401] * 20
    with psycopg.connect(dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT resource_id, success, host(client_ip) FROM audit.events"
            " WHERE kind = 'auth' AND action = 'login_failed'").fetchall()
        attempts = conn.execute("SELECT count(*) FROM orders_loginattempt").fetchone()
    assert rows == [("user007", False, "203.0.113.7")] * 20
    assert attempts == (0,)  # written in the request's transaction, rolled back
