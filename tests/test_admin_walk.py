"""The cursor walks a 100,000-entry trail without gaps or repeats; Flask can mount the app."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest
from flask import Flask
from psycopg_pool import AsyncConnectionPool
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from audit_mw.admin import admin_app
from audit_mw.admin.wsgi import admin_wsgi_app
from audit_mw.web.wsgi import WSGIAuditMiddleware
from tests._admin import (
    SECRET,
    access_events,
    allow,
    anyio_backend,
    client,
    generate_events,
    pool,
    reader_dsn,
)

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = pytest.mark.db

ENTRIES = 100_000


@pytest.mark.anyio
@pytest.mark.slow
async def test_cursor_walks_100k_entries_without_gaps_or_repeats(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    generate_events(conn, ENTRIES, users=7)
    expected = [r[0] for r in conn.execute(
        "SELECT id FROM audit.events WHERE kind = 'data' ORDER BY id DESC").fetchall()]
    user3 = [r[0] for r in conn.execute(
        "SELECT id FROM audit.events WHERE app_user_id = 'user3' ORDER BY id DESC").fetchall()]
    app = admin_app(pool, authorize=allow, cursor_secret=SECRET)
    async with client(app) as http:
        for filters, want in (({"kind": "data"}, expected), ({"user_id": "user3"}, user3)):
            seen: list[int] = []
            params: dict[str, str] = {**filters, "limit": "200"}
            slowest = 0.0
            while True:
                started = time.perf_counter()
                response = await http.get("/events", params=params)
                slowest = max(slowest, time.perf_counter() - started)
                assert response.status_code == 200, response.text
                body = response.json()
                assert len(body["events"]) <= 200
                seen += [e["id"] for e in body["events"]]
                if body["next_cursor"] is None:
                    break
                params = {**filters, "limit": "200", "cursor": body["next_cursor"]}
            assert seen == want  # same order, nothing missing, nothing twice
            assert body["page"] == -(-len(want) // 200)
    walks = [e for e in access_events(conn) if e["metadata"].get("cursor")]
    assert len(walks) == len(expected) // 200 - 1 + len(user3) // 200


def test_flask_mounts_the_admin_app(reader_dsn: str, conn: psycopg.Connection[Any]) -> None:
    generate_events(conn, 5)
    flask_app = Flask(__name__)

    @flask_app.get("/")
    def home() -> str:
        return "home"

    def remote_auditor(request: Any) -> bool:
        return bool(request.scope["wsgi_environ"].get("REMOTE_USER") == "ada")

    pool: AsyncConnectionPool[Any] = AsyncConnectionPool(reader_dsn, min_size=1, max_size=2,
                                                          open=False)
    admin = admin_wsgi_app(pool, authorize=remote_auditor)
    try:
        flask_app.wsgi_app = DispatcherMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, {"/audit": admin})
        flask_app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
            flask_app.wsgi_app, user_resolver=lambda environ: environ.get("REMOTE_USER"))
        http = flask_app.test_client()
        assert http.get("/").text == "home"
        ok = http.get("/audit/events?limit=2", environ_base={"REMOTE_USER": "ada",
                                                              "REMOTE_ADDR": "192.0.2.9"},
                      headers={"X-Request-Id": "flask-req-1"})
        assert ok.status_code == 200, ok.text
        assert len(ok.json["events"]) == 2
        assert ok.json["total"] == 5
        refused = http.get("/audit/events", environ_base={"REMOTE_USER": "eve"})
        assert refused.status_code == 403
        assert "events" not in refused.json
    finally:
        admin.run(pool.close())
        admin.stop()
    accesses = access_events(conn)
    assert [(e["action"], e["app_user_id"]) for e in accesses] == [
        ("audit_queried", "ada"), ("audit_access_denied", "eve")]
    assert accesses[0]["request_id"] == "flask-req-1"
    assert str(accesses[0]["client_ip"]) == "192.0.2.9"
