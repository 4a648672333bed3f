"""The admin routes cannot be turned against the trail or the application.

- a flood of refused requests writes a bounded number of rows, and the pool stays usable;
- an export whose client stops reading is cut off within its limit and its transaction
  ends; exports beyond the cap are answered 429 while the query routes keep working;
- a cursor minted by one app instance works on another with the same configuration.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import ExportSigningKey, admin_app
from audit_mw.admin._limits import DenialLimiter
from tests._admin import (
    ADMIN_ROLE,
    access_events,
    allow,
    anyio_backend,
    client,
    generate_events,
    pool,
    reader_dsn,
)

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = [pytest.mark.db, pytest.mark.anyio]

SIGNER = ExportSigningKey(Ed25519PrivateKey.from_private_bytes(b"\x11" * 32))
EXPORT_URL = "/export?from=2024-01-01T00:00:00Z&to=2025-01-01T00:00:00Z"


def deny(request: Any) -> bool:
    return False


def test_the_denial_limiter_counts_what_it_holds_back() -> None:
    now = [0.0]
    limiter = DenialLimiter(window=60, budget=3, clock=lambda: now[0])
    assert limiter.admit("a") == 1
    assert [limiter.admit("a") for _ in range(5)] == [None] * 5
    assert limiter.admit("b") == 1
    assert limiter.admit("c") == 1
    assert limiter.admit("d") is None  # over the budget: counted, written later
    now[0] = 61.0
    assert limiter.admit("a") == 6  # this one and the five held back
    assert limiter.admit("d") == 2


async def test_ten_thousand_refusals_leave_a_bounded_trail_and_a_usable_pool(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    app = admin_app(pool, authorize=deny, export_key=SIGNER)
    started = time.monotonic()
    async with client(app) as http:
        for start in range(0, 10_000, 250):
            answers = await asyncio.gather(*(
                http.get(f"/events/{n}" if n % 2 else "/events")
                for n in range(start, start + 250)))
            assert {a.status_code for a in answers} == {403}
            # The application's own queries through the same pool keep working.
            async with pool.connection(timeout=2) as own:
                assert await (await own.execute("SELECT 1")).fetchone() == (1,)
    elapsed = time.monotonic() - started
    refusals = [e for e in access_events(conn) if e["action"] == "audit_access_denied"]
    assert 1 <= len(refusals) <= 100, len(refusals)
    assert refusals[0]["metadata"]["count"] == 1
    assert elapsed < 120


def _scope(path: str, query: str) -> dict[str, Any]:
    return {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1", "method": "GET", "scheme": "http", "path": path,
            "raw_path": path.encode(), "query_string": query.encode(), "root_path": "",
            "headers": [(b"host", b"admin.test")], "client": ("127.0.0.1", 5000),
            "server": ("admin.test", 80)}


async def _stalled_export(app: Any, seen: list[bytes]) -> float:
    """Run an export whose client takes the first chunk and then never reads again."""
    never = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await never.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            seen.append(message["body"])
            if len(seen) > 1:
                await never.wait()  # the client's window is full: it stopped reading

    started = time.monotonic()
    path, _, query = EXPORT_URL.partition("?")
    await app(_scope(path, query), receive, send)
    return time.monotonic() - started


def _open_transactions(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s"
        " AND state LIKE 'idle in transaction%%'", [ADMIN_ROLE]).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_client_that_stops_reading_is_cut_off_and_its_transaction_ends(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, 20_000)
    app = admin_app(pool, authorize=allow, export_key=SIGNER, export_idle_timeout=1.0,
                    max_concurrent_exports=1)
    seen: list[bytes] = []
    exporting = asyncio.ensure_future(_stalled_export(app, seen))
    while len(seen) < 2:
        await asyncio.sleep(0.05)
    async with client(app) as http:
        # One export at a time: the next one is refused at once, the queries still work.
        busy = await http.get(EXPORT_URL)
        assert busy.status_code == 429
        assert busy.headers["retry-after"] == "30"
        assert (await http.get("/events?limit=1")).status_code == 200
    elapsed = await asyncio.wait_for(exporting, timeout=30)
    assert elapsed < 10
    assert _open_transactions(conn) == 0
    ends = [e for e in access_events(conn) if e["action"] == "audit_exported"]
    assert ends[-1]["success"] is False
    assert pool.get_stats().get("pool_available", 0) >= 1
    # The slot is free again: a reading client gets the whole export.
    async with client(app) as http:
        response = await http.get(EXPORT_URL)
        assert response.status_code == 200
        assert response.content.rstrip().rsplit(b"\n", 1)[-1].startswith(b'{"manifest"')


async def test_a_cursor_from_one_instance_works_on_another(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    generate_events(conn, 30)
    monkeypatch.delenv("AUDIT_CURSOR_SECRET", raising=False)
    monkeypatch.setenv("AUDIT_EXPORT_KEY", base64.b64encode(b"\x11" * 32).decode())
    first, second = admin_app(pool, authorize=allow), admin_app(pool, authorize=allow)
    async with client(first) as one, client(second) as two:
        page = (await one.get("/events", params={"limit": "10"})).json()
        cursor = page["next_cursor"]
        assert cursor
        follow = await two.get("/events", params={"limit": "10", "cursor": cursor})
        assert follow.status_code == 200, follow.text
        assert follow.json()["page"] == 2
    # An explicit secret shared by the workers works the same; another one does not.
    monkeypatch.delenv("AUDIT_EXPORT_KEY")
    monkeypatch.setenv("AUDIT_CURSOR_SECRET", base64.b64encode(b"c" * 32).decode())
    third = admin_app(pool, authorize=allow)
    monkeypatch.setenv("AUDIT_CURSOR_SECRET", base64.b64encode(b"d" * 32).decode())
    fourth = admin_app(pool, authorize=allow)
    async with client(third) as three, client(fourth) as four:
        cursor = (await three.get("/events", params={"limit": "10"})).json()["next_cursor"]
        refused = await four.get("/events", params={"limit": "10", "cursor": cursor})
        assert refused.status_code == 400


async def test_a_client_that_disconnects_ends_the_export_transaction(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, 20_000)
    app = admin_app(pool, authorize=allow, export_key=SIGNER, export_idle_timeout=60.0)
    first_chunk = asyncio.Event()
    stalled = asyncio.Event()
    sent_request = False

    async def receive() -> dict[str, Any]:
        nonlocal sent_request
        if not sent_request:
            sent_request = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await first_chunk.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and message.get("body"):
            first_chunk.set()
            await stalled.wait()  # a full socket: only the disconnect can end this

    path, _, query = EXPORT_URL.partition("?")
    started = time.monotonic()
    await asyncio.wait_for(app(_scope(path, query), receive, send), timeout=30)
    assert time.monotonic() - started < 10  # far below the 60 s idle limit
    assert _open_transactions(conn) == 0
    ends = [e for e in access_events(conn) if e["action"] == "audit_exported"]
    assert ends[-1]["success"] is False
