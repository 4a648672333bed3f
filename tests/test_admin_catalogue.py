"""A catalogue of bad input against every parameter of the admin routes: never a 500,
never a stream that breaks after its 200.

Every value is validated to what PostgreSQL accepts before any query runs: zone ids in IP
addresses, years outside 1..9999 once in UTC, lone surrogates, NULs, huge numbers.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import admin_app
from audit_mw.admin._export_format import csv_row, neutralise_cell, restore_cell
from tests._admin import KEY, SECRET, allow, anyio_backend, client, insert_events, pool, reader_dsn

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = [pytest.mark.db, pytest.mark.anyio]

#: Values hostile to some layer: Python accepts them, PostgreSQL may not, or the reverse.
HOSTILE: list[str] = [
    "", " ", "x" * 1025, "x" * 300, "\x00", "a\x00b", "\x7f", "a\tb", "\r\n", "\u2028",
    "\ud800", "a\udfffb", "\U0001f600", "\u202eevil", "\uff21\uff22\uff23",
    "\u0661\u0662\u0663", "\uff12", "%", "%%", "%ZZ",
    "'; DROP TABLE audit.events; --", "\\", "/", "..", "null", "true", "TRUE", "[]", "{}",
    "-1", "0", "1", "201", "99999999999999999999", "1e309", "NaN", "infinity", "-infinity",
    "fe80::1%eth0", "fe80::1%25eth0", "::1%1", "fe80::1%eth0/64", "1.2.3.4/33", "1.2.3.4/-1",
    "01.02.03.04", "1.2.3", "::ffff:1.2.3.4", "10.0.0.0/8", "2001:db8::/129",
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-14:00", "0000-01-01T00:00:00Z",
    "10000-01-01T00:00:00Z", "2024-02-30T00:00:00Z", "2024-01-01T00:00:00+24:00",
    "2024-01-01", "2024-01-01T00:00:00", "2024-01-01T25:00:00Z", "2024-W01-1T00:00:00Z",
    "0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "2024-01-01T00:00:00.1234567Z",
]

EVENT_PARAMS = ["user_id", "record_id", "table", "action", "kind", "success", "request_id",
                "ip", "from", "to", "page", "limit", "cursor", "nonsense"]
HISTORY_PARAMS = ["schema", "limit", "cursor", "nonsense"]
EXPORT_PARAMS = ["from", "to", "format", "nonsense"]


def _q(value: str) -> str:
    # Percent-encoded UTF-8; a lone surrogate goes out as the (invalid) bytes it would be.
    return quote(value, safe="", errors="surrogatepass")


def _urls() -> list[str]:
    urls: list[str] = []
    for value in HOSTILE:
        v = _q(value)
        urls += [f"/events?{name}={v}" for name in EVENT_PARAMS]
        urls += [f"/records/items/1?{name}={v}" for name in HISTORY_PARAMS]
        good_to, good_from = "to=2025-01-01T00:00:00Z", "from=2024-01-01T00:00:00Z"
        urls += [f"/export?from={v}&{good_to}", f"/export?{good_from}&to={v}",
                 f"/export?{good_from}&{good_to}&format={v}",
                 f"/export?from={v}&to=9999-12-31T23:59:59Z",
                 f"/export?from=0001-01-01T00:00:00Z&to={v}&format=csv"]
        if value:
            urls += [f"/events/{v}", f"/records/{v}/1", f"/records/items/{v}",
                     f"/verify?{v}={v}", f"/openapi.json?x={v}"]
    return urls


async def test_the_bad_input_catalogue_never_reaches_a_500(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    insert_events(conn, [
        {"occurred_at": "2024-06-01T00:00:00Z", "table_name": "items", "record_id": "1",
         "app_user_id": "=1+1", "client_ip": "fe80::1"},
        {"occurred_at": "0001-01-01T05:00:00Z", "app_user_id": "\uff1dcmd"},
        {"occurred_at": "9999-12-31T12:00:00Z", "app_user_id": " =2"},
    ])
    app = admin_app(pool, authorize=allow, export_key=KEY, cursor_secret=SECRET)
    urls = _urls()
    assert len(urls) >= 1000
    statuses: dict[int, int] = {}
    async with client(app) as http:
        for url in urls:
            response = await http.get(url)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (url, response.text[:300])
            if response.status_code == 200 and url.startswith("/export"):
                last = response.content.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
                assert last.startswith((b'{"manifest"', b"#manifest,")), (url, last[:200])
            elif response.status_code < 300 or response.status_code >= 400:  # 307: a slash
                try:
                    parsed = json.loads(response.content)
                except ValueError:
                    parsed = None
                assert isinstance(parsed, dict), (url, response.status_code, response.text)
    assert statuses.get(400, 0) > 500
    assert statuses.get(200, 0) > 50


@pytest.mark.parametrize("value", [
    "=1+1", "+1", "-1", "@SUM(A1)", "'quoted", "\t=1", "\r=1", "\n=1", " =1", "  @x",
    "\u00a0=1", "\uff1d1+1", "\uff0b1", "\uff0d1", "\uff20SUM(A1)", "\ufe661", "\u22121",
])
def test_csv_cells_that_could_run_as_formulas_are_neutralised(value: str) -> None:
    cell = neutralise_cell(value)
    assert cell == "'" + value
    assert restore_cell(cell) == value
    assert csv_row([value]).startswith("\"'")


@pytest.mark.parametrize("value", ["plain", "1.5", "x=1", "a-b", "\uff58", "2024-01-01"])
def test_ordinary_cells_are_left_alone(value: str) -> None:
    assert neutralise_cell(value) == value
