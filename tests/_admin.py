"""Fixtures and helpers for the admin route tests (imported by the test_admin_* modules)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette

from audit_mw.admin.export import ExportKey
from tests.conftest import Cluster

#: The login role of the admin routes: audit_reader, and nothing else of the trail.
ADMIN_ROLE = "audit_mw_test_admin"
KEY = ExportKey("test-key-1", b"0123456789abcdef0123456789abcdef")
SECRET = b"cursor-secret-for-tests-32-bytes"


def allow(request: Any) -> bool:
    return True


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def reader_dsn(cluster: Cluster, database: str) -> str:
    """A DSN for the test database as the admin routes' role: audit_reader and audit_writer."""
    with cluster.admin() as admin:
        exists = admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                               [ADMIN_ROLE]).fetchone()
        if not exists:
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ADMIN_ROLE)))
        # Read the trail, and record the accesses through audit.log_event().
        admin.execute(sql.SQL("GRANT audit_reader, audit_writer TO {}").format(
            sql.Identifier(ADMIN_ROLE)))
    return cluster.dsn(database, user=ADMIN_ROLE)


@pytest.fixture
async def pool(reader_dsn: str) -> AsyncIterator[AsyncConnectionPool[Any]]:
    async with AsyncConnectionPool(reader_dsn, min_size=1, max_size=4, open=False) as opened:
        yield opened


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                             base_url="http://admin.test")


def insert_events(conn: psycopg.Connection[Any], rows: Sequence[dict[str, Any]]) -> list[int]:
    """Insert events straight into the trail (as the superuser); return their ids."""
    ids = []
    for row in rows:
        values = {"kind": "data", "action": "INSERT", **row}
        names = list(values)
        query = sql.SQL("INSERT INTO audit.events ({}) VALUES ({}) RETURNING id").format(
            sql.SQL(", ").join(map(sql.Identifier, names)),
            sql.SQL(", ").join(sql.Placeholder(n) for n in names))
        found = conn.execute(query, values).fetchone()
        assert found is not None
        ids.append(int(found[0]))
    return ids


def generate_events(conn: psycopg.Connection[Any], count: int, *, users: int = 50,
                    start: str = "2024-01-01T00:00:00Z", step: str = "1 second") -> None:
    """``count`` synthetic row-change events, one ``step`` apart, in one statement."""
    conn.execute(
        """
        INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name,
                                  record_id, new_values, app_user_id, client_ip, request_id)
        SELECT %(start)s::timestamptz + (g - 1) * %(step)s::interval, 'data',
               (ARRAY['INSERT', 'UPDATE', 'DELETE'])[1 + g %% 3], 'public',
               (ARRAY['orders', 'users', 'invoices'])[1 + g %% 3], (g %% 5000)::text,
               jsonb_build_object('n', g), 'user' || (g %% %(users)s),
               ('10.0.' || (g %% 200) || '.1')::inet, 'req-' || g
        FROM generate_series(1, %(count)s) AS g
        """,
        {"start": start, "step": step, "count": count, "users": users},
    )


def access_events(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The admin events recorded so far (accesses and refusals), oldest first."""
    with conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute("SELECT * FROM audit.events WHERE kind = 'admin' ORDER BY id")
        return cur.fetchall()

