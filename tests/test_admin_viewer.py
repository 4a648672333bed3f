"""The audit viewer's pages over HTTP (in-process), against the real server.

What a browser does with them (scripts that must not run, links, filters, screenshots) is in
``test_admin_viewer_browser.py``; this module checks the answers themselves.
"""

from __future__ import annotations

import json
import re
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.routing import Mount

from audit_mw.admin import admin_app
from audit_mw.admin.viewer import SECURITY_HEADERS
from tests._admin import (
    KEY,
    access_events,
    allow,
    anyio_backend,
    client,
    insert_events,
    pool,
    reader_dsn,
)

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = [pytest.mark.db, pytest.mark.anyio]

PAGES = ["/ui/", "/ui/records/orders/1", "/ui/records", "/ui/logins", "/ui/integrity",
         "/ui/export"]
PAYLOAD = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'


def deny(request: Any) -> bool:
    return False


def _has_no_markup_from_the_trail(html: str) -> None:
    assert "<script" not in html
    assert "<img" not in html  # the payload's text is there, escaped: never as a tag


async def test_every_page_is_served_with_the_security_headers(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [{"table_name": "orders", "record_id": "1", "app_user_id": "alice"}])
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        for path in PAGES:
            response = await http.get(path)
            assert response.status_code == 200, (path, response.text)
            assert response.headers["content-type"] == "text/html; charset=utf-8"
            for name, value in SECURITY_HEADERS.items():
                assert response.headers[name] == value, (path, name)
            csp = response.headers["content-security-policy"]
            assert "script-src" not in csp  # default-src 'none' forbids every script
            assert "unsafe-inline" not in csp
            assert "<script" not in response.text
            assert " style=" not in response.text  # no inline style for the CSP to allow
        css = await http.get("/ui/static/viewer.css")
        assert css.status_code == 200
        assert css.headers["content-type"].startswith("text/css")


async def test_pages_are_refused_like_the_api_and_show_nothing(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [{"table_name": "orders", "record_id": "1", "app_user_id": "alice",
                          "new_values": json.dumps({"marker": "s3cr3t"})}])
    for authorize in (None, deny):
        app = admin_app(pool, authorize=authorize)
        async with client(app) as http:
            for path in PAGES:
                response = await http.get(path)
                assert response.status_code == 403, path
                assert "s3cr3t" not in response.text
                assert "alice" not in response.text
                assert "not authorised" in response.text
                assert response.headers["x-frame-options"] == "DENY"
    refusals = [e for e in access_events(conn) if e["action"] == "audit_access_denied"]
    assert [e["metadata"]["path"] for e in refusals] == PAGES * 2


async def test_page_views_are_access_events(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [{"table_name": "orders", "record_id": "7", "app_user_id": "bob"}])
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        assert (await http.get("/ui/", params={"user_id": "bob", "table": ""})).status_code \
            == 200
        assert (await http.get("/ui/records/orders/7")).status_code == 200
        assert (await http.get("/ui/integrity")).status_code == 200
    queried = [e for e in access_events(conn) if e["action"] == "audit_queried"]
    assert [e["metadata"]["endpoint"] for e in queried] == [
        "ui/events", "ui/records", "ui/integrity"]
    assert queried[0]["metadata"]["filters"] == {"user_id": "bob"}
    assert queried[0]["metadata"]["rows"] == 1
    assert queried[1]["metadata"]["filters"] == {"table": "orders", "record_id": "7"}


async def test_bad_filters_are_shown_with_the_form_and_read_nothing(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        response = await http.get("/ui/", params={"from": "yesterday", "user_id": "bob"})
        assert response.status_code == 400
        assert "from:" in response.text
        assert 'value="bob"' in response.text  # the form keeps what was typed
        unknown = await http.get("/ui/", params={"sql": "1; DROP TABLE x"})
        assert unknown.status_code == 400
        assert (await http.get("/ui/logins", params={"from": "x"})).status_code == 400
        assert (await http.get("/ui/integrity", params={"a": "b"})).status_code == 400
    assert [e for e in access_events(conn) if e["action"] == "audit_queried"] == []


async def test_nothing_is_served_to_a_post(pool: AsyncConnectionPool[Any]) -> None:
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        for path in PAGES:
            assert (await http.post(path)).status_code == 405, path


async def test_stored_markup_is_escaped_and_hidden_values_are_labelled(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [
        {"table_name": "orders", "record_id": "9", "app_user_id": PAYLOAD,
         "new_values": json.dumps({"item": PAYLOAD, "card": "[masked]", "qty": 1})},
        {"table_name": "orders", "record_id": "9", "action": "UPDATE", "app_user_id": PAYLOAD,
         "old_values": json.dumps({"item": PAYLOAD, "card": "[masked]", "qty": 1}),
         "new_values": json.dumps({"item": PAYLOAD, "card": "[masked]", "qty": 2}),
         "changed_fields": ["qty"]},
        {"kind": "auth", "action": "login_failed", "success": False, "resource_type": "user",
         "resource_id": PAYLOAD, "client_ip": "203.0.113.9"},
    ])
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        for path in ("/ui/", "/ui/records/orders/9", "/ui/logins"):
            response = await http.get(path)
            assert response.status_code == 200
            _has_no_markup_from_the_trail(response.text)
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in response.text, path
        history = (await http.get("/ui/records/orders/9")).text
    steps = history.split('<section class="step"')[1:]
    changed = [re.findall(r'<tr class="changed" data-field="(\w+)"', step) for step in steps]
    # The INSERT sets every field; the UPDATE changed only qty.
    assert [sorted(names) for names in changed] == [["card", "item", "qty"], ["qty"]]
    assert '<span class="hidden-value"' in history
    assert ">masked</span>" in history
    assert "[masked]" not in history


async def test_links_follow_the_mount_path(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [{"table_name": "orders", "record_id": "a/b", "app_user_id": "carol",
                          "request_id": "req-1"}])
    outer = Starlette(routes=[Mount("/compliance/trail",
                                    admin_app(pool, authorize=allow))])
    async with client(outer) as http:
        page = await http.get("/compliance/trail/ui/")
        assert page.status_code == 200
        hrefs = re.findall(r'href="([^"]+)"', page.text)
        assert "/compliance/trail/ui/static/viewer.css" in hrefs
        assert "/compliance/trail/ui/records/orders/a%2Fb" in hrefs
        assert "/compliance/trail/ui/?user_id=carol" in hrefs
        assert "/compliance/trail/ui/?request_id=req-1" in hrefs
        assert all(h.startswith("/compliance/trail/") or h == "#main" for h in hrefs)
        history = await http.get("/compliance/trail/ui/records/orders/a%2Fb")
        assert history.status_code == 200
        assert "carol" in history.text


async def test_a_pasted_page_size_stays_selected(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [{"table_name": "orders", "record_id": str(n)} for n in range(9)])
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        page = await http.get("/ui/", params={"limit": "7"})
    assert page.status_code == 200
    assert '<option value="7" selected>' in page.text
    assert page.text.count('<td class="num">') == 7
    assert 'rel="next"' in page.text
