"""Exports over HTTP and the CLI, and their offline verification."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import admin_app, verify_export
from audit_mw.admin.export import ExportKey, ExportWriter, neutralise_cell
from audit_mw.admin.query import parse_export_range
from audit_mw.cli import main
from tests._admin import (
    KEY,
    access_events,
    allow,
    anyio_backend,
    client,
    generate_events,
    insert_events,
    pool,
    reader_dsn,
)

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = pytest.mark.db

KEY_ENV_VALUE = f"{KEY.key_id}:{base64.b64encode(KEY.secret).decode()}"
RANGE = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}
PAYLOADS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(1,1)", "\t=1", "\r=1+1",
            'quote " and, comma', "line\nbreak", "=HYPERLINK(\"http://x\")"]


def seed(conn: psycopg.Connection[Any]) -> None:
    generate_events(conn, 40, start="2024-01-10T00:00:00Z", step="1 hour")
    insert_events(conn, [
        {"occurred_at": "2024-01-20T00:00:00Z", "app_user_id": payload, "record_id": payload,
         "table_name": "orders", "new_values": json.dumps({"note": payload})}
        for payload in PAYLOADS
    ])
    # Outside the range: never exported.
    insert_events(conn, [{"occurred_at": "2024-02-01T00:00:00Z", "app_user_id": "late"},
                         {"occurred_at": "2023-12-31T23:59:59Z", "app_user_id": "early"}])


def test_neutralise_cell() -> None:
    assert [neutralise_cell(p) for p in ("=1", "+1", "-1", "@a", "\t1", "\r1")] == [
        "'=1", "'+1", "'-1", "'@a", "'\t1", "'\r1"]
    assert neutralise_cell("plain = text") == "plain = text"
    assert neutralise_cell("") == ""


@pytest.mark.anyio
async def test_http_ndjson_export_verifies_and_is_recorded(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    seed(conn)
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        response = await http.get("/export", params=RANGE)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.headers["content-disposition"].startswith("attachment; filename=")
    lines = response.content.splitlines(keepends=True)
    header, events, manifest = (json.loads(lines[0]), [json.loads(x) for x in lines[1:-1]],
                                json.loads(lines[-1])["manifest"])
    assert header["format"] == "ndjson"
    assert header["columns"][:3] == ["id", "occurred_at", "kind"]
    assert len(events) == 49 == manifest["count"]
    assert [e["id"] for e in events] == sorted(e["id"] for e in events)
    assert {e["app_user_id"] for e in events}.isdisjoint({"late", "early"})
    assert set(events[0]) == set(header["columns"])  # every column of audit.events
    assert manifest["first"]["id"] == events[0]["id"]
    assert manifest["last"]["id"] == events[-1]["id"]
    assert manifest["verification"]["key_id"] == KEY.key_id
    result = verify_export(lines, KEY)
    assert result.ok, result.problems
    assert result.count == 49

    exports = [e for e in access_events(conn) if e["action"].startswith("audit_export")]
    assert [e["action"] for e in exports] == ["audit_export_started", "audit_exported"]
    assert exports[1]["metadata"]["rows"] == 49
    assert exports[1]["metadata"]["sha256"] == manifest["sha256"]
    assert exports[1]["success"] is True


@pytest.mark.anyio
async def test_http_csv_export_neutralises_formulas_and_round_trips(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    seed(conn)
    app = admin_app(pool, authorize=allow, export_key=KEY)
    async with client(app) as http:
        response = await http.get("/export", params={**RANGE, "format": "csv"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].endswith('.csv"')
    rows = list(csv.reader(io.StringIO(response.content.decode(), newline="")))
    header, data, manifest_row = rows[0], rows[1:-1], rows[-1]
    assert manifest_row[0] == "#manifest"
    assert json.loads(manifest_row[1])["count"] == len(data) == 49
    users = [dict(zip(header, row, strict=True))["app_user_id"] for row in data]
    for payload in PAYLOADS:
        expected = "'" + payload if payload[0] in "=+-@\t\r" else payload
        assert users.count(expected) == 1, payload
    for row in data:
        for cell in row:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    notes = [json.loads(dict(zip(header, r, strict=True))["new_values"]) for r in data]
    assert {"note": "line\nbreak"} in notes
    result = verify_export(response.content.splitlines(keepends=True), KEY)
    assert result.ok, result.problems


def _tampered(lines: list[bytes], how: str) -> list[bytes]:
    changed = list(lines)
    if how == "edited":
        changed[5] = changed[5].replace(b"user", b"usec", 1)
        assert changed[5] != lines[5]
    elif how == "removed":
        del changed[7]
    elif how == "added":
        changed.insert(3, changed[3])
    elif how == "reordered":
        changed[3], changed[4] = changed[4], changed[3]
    elif how == "truncated":
        changed = changed[:-1]
    elif how == "manifest count":
        manifest = json.loads(changed[-1])
        manifest["manifest"]["count"] -= 1
        changed[-1] = json.dumps(manifest, separators=(",", ":")).encode() + b"\n"
    return changed


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_cli_export_and_verify_export(  # noqa: PLR0917 - pytest fixtures
    dsn: str, conn: psycopg.Connection[Any], tmp_path: Path, fmt: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    seed(conn)
    monkeypatch.delenv("AUDIT_EXPORT_KEY", raising=False)
    monkeypatch.setenv("AUDIT_HMAC_KEY", KEY_ENV_VALUE)
    out = tmp_path / f"export.{fmt}"
    assert main(["--dsn", dsn, "export", "--from", RANGE["from"], "--to", RANGE["to"],
                 "--format", fmt, "-o", str(out)]) == 0
    assert "exported 49 entries" in capsys.readouterr().out
    assert not out.with_name(out.name + ".partial").exists()

    # The auditor's side: no database, only the file and the key.
    assert main(["--dsn", "host=127.0.0.1 port=1", "verify-export", str(out)]) == 0
    assert "ok: 49 entries" in capsys.readouterr().out
    assert main(["verify-export", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True

    lines = out.read_bytes().splitlines(keepends=True)
    hows = ["edited", "removed", "added", "reordered", "truncated"]
    if fmt == "ndjson":
        hows.append("manifest count")
    for how in hows:
        bad = tmp_path / f"{how}.{fmt}"
        bad.write_bytes(b"".join(_tampered(lines, how)))
        assert main(["verify-export", str(bad)]) == 1, how
        assert "verify-export: FAILED" in capsys.readouterr().out

    other = base64.b64encode(b"another key, long enough to use!").decode()
    monkeypatch.setenv("AUDIT_HMAC_KEY", f"{KEY.key_id}:{other}")
    assert main(["verify-export", str(out)]) == 1
    assert "MAC does not match" in capsys.readouterr().out
    # After a rotation the old key still verifies, from AUDIT_HMAC_KEYS.
    monkeypatch.setenv("AUDIT_HMAC_KEY", f"new-key:{other}")
    monkeypatch.setenv("AUDIT_HMAC_KEYS", KEY_ENV_VALUE)
    assert main(["verify-export", str(out)]) == 0
    capsys.readouterr()
    monkeypatch.delenv("AUDIT_HMAC_KEYS")
    monkeypatch.delenv("AUDIT_HMAC_KEY")
    # Nothing is sealed here: without the key nothing can be verified.
    assert main(["verify-export", str(out)]) == 2
    assert "no key to check the manifest" in capsys.readouterr().out

    actions = [(e["action"], e["app_user_id"][:4], e["metadata"].get("rows"))
               for e in access_events(conn)]
    assert actions == [("audit_export_started", "cli:", None), ("audit_exported", "cli:", 49)]


def test_recomputed_digest_without_the_key_is_caught() -> None:
    forger = ExportKey("test-key-1", b"not the real key, but long enough")
    writer = ExportWriter(parse_export_range(RANGE.items()), ["id", "occurred_at", "txid"],
                          forger)
    event = '{"id":1,"occurred_at":"2024-01-02T00:00:00+00:00","txid":"7"}'
    body = [writer.header(), writer.rows([(1, event, None, None, None, None)]),
            writer.manifest()]
    assert verify_export(body, forger).ok
    result = verify_export(body, KEY)
    assert not result.ok
    assert result.exit_code == 1
    assert any("MAC does not match" in p for p in result.problems)
    assert verify_export(body[:2], KEY).ok is False


def test_cli_export_errors(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                           capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("AUDIT_HMAC_KEY", raising=False)
    monkeypatch.delenv("AUDIT_EXPORT_KEY", raising=False)
    out = str(tmp_path / "x.ndjson")
    assert main(["--dsn", dsn, "export", "--from", RANGE["from"], "--to", RANGE["to"],
                 "-o", out]) == 2
    assert "set AUDIT_EXPORT_KEY" in capsys.readouterr().err
    monkeypatch.setenv("AUDIT_HMAC_KEY", KEY_ENV_VALUE)
    assert main(["--dsn", dsn, "export", "--from", "2024-01-01", "--to", RANGE["to"],
                 "-o", out]) == 2
    assert "from: needs a time zone" in capsys.readouterr().err
    assert main(["verify-export", str(tmp_path / "missing")]) == 2
