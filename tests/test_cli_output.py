"""The command line's output contract.

- every command that reports a result offers ``--json`` and then prints exactly one JSON
  document on stdout; structlog records (the events a command writes) go to stderr;
- a user error (bad input, a stopped server, a refused command) is one line on stderr,
  ``audit-mw: error: ...``, and exit status 2, never a traceback.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_mw.cli import main

pytestmark = pytest.mark.db

STOPPED = "host=127.0.0.1 port=1 connect_timeout=1"
HMAC = "k1:" + base64.b64encode(b"k" * 32).decode()
EXPORT = base64.b64encode(b"\x07" * 32).decode()


@pytest.fixture
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AUDIT_HMAC_KEYS", "AUDIT_VERIFY_KEYS", "AUDIT_SIGNING_KEY",
                 "AUDIT_CHECKPOINT_FILE", "AUDIT_RETENTION_POLICY", "AUDIT_MW_SPOOL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIT_HMAC_KEY", HMAC)
    monkeypatch.setenv("AUDIT_EXPORT_KEY", EXPORT)


def _one_error(capsys: pytest.CaptureFixture[str], status: int, argv: list[str]) -> str:
    captured = capsys.readouterr()
    # A warning may come first (no checkpoint file given); the error is one line.
    lines = [line for line in captured.err.strip().splitlines()
             if not line.startswith("audit-mw: warning: ")]
    assert status == 2, (argv, captured)
    assert len(lines) == 1, (argv, captured.err)
    assert lines[0].startswith("audit-mw: error: "), (argv, captured.err)
    assert "Traceback" not in captured.err
    assert captured.out == "", (argv, captured.out)
    return lines[0]


def test_every_subcommand_fails_in_one_line_against_a_stopped_server(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spool = tmp_path / "spool.jsonl"
    spool.write_text("")
    commands = [
        ["install"], ["install", "--writer-role", "no_such_role"], ["track", "t"],
        ["retrack"], ["untrack", "t"], ["status"], ["replay", "--spool", str(spool)],
        ["seal"], ["verify"],
        ["export", "--from", "2024-01-01T00:00:00Z", "--to", "2024-02-01T00:00:00Z",
         "-o", str(tmp_path / "x.ndjson")],
        ["retention", "show", "--policy", "2y"], ["retention", "apply", "--policy", "2y"],
        ["hold", "add", "--reason", "r", "--user", "u"], ["hold", "remove", "1", "--reason", "r"],
        ["hold", "list"], ["partitions", "ensure"], ["partitions", "list"],
        ["archive", str(tmp_path / "archive")],
    ]
    # stream has no --json; it fails the same way.
    full = ["--dsn", STOPPED, "stream", "--state-file", str(tmp_path / "state"), "--once"]
    line = _one_error(capsys, main(full), full)
    assert "cannot connect to the database" in line, line
    for argv in commands:
        for extra in ([], ["--json"]):
            full = ["--dsn", STOPPED, *argv, *extra]
            if argv == ["install", "--writer-role", "no_such_role"] and extra:
                continue
            line = _one_error(capsys, main(full), full)
            assert "cannot connect to the database" in line, line


def test_bad_input_is_one_line_and_exit_2(
    keys: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = [
        ["hold", "remove", "not-a-number", "--reason", "r"],
        ["hold", "add", "--reason", "r", "--from", "yesterday"],
        ["export", "--from", "2024-01-01", "--to", "2024-02-01T00:00:00Z", "-o", "x"],
        ["export", "--from", "0001-01-01T00:00:00+05:00", "--to", "2024-02-01T00:00:00Z",
         "-o", "x"],
        ["verify-export", str(tmp_path / "missing.ndjson")],
        ["verify-export", "--export-public-key", "not base64!", str(tmp_path)],
        ["verify-archive", "--public-key", "not base64!", str(tmp_path)],
        ["stream", "--to", "ftp://example.org/x", "--state-file", str(tmp_path / "s")],
        ["stream", "--state-file", str(tmp_path / "s"), "--from", "yesterday"],
        ["keygen", "--kid", "bad id"],
        ["retention", "show", "--policy", "forever-and-a-day"],
        ["retention", "show", "--now", "noon"],
        ["track", "t", "--exclude", "nodot"],
        ["partitions", "ensure", "--months-ahead", "many"],
        ["seal", "--batch-size", "zero"],
        ["no-such-command"],
        [],
    ]
    for argv in bad:
        full = ["--dsn", STOPPED, *argv]
        _one_error(capsys, main(full), full)


def _json(capsys: pytest.CaptureFixture[str], status: int, argv: list[str],
          expected: int = 0) -> Any:
    captured = capsys.readouterr()
    assert status == expected, (argv, captured)
    try:
        return json.loads(captured.out)  # exactly one document: extra data fails here
    except ValueError:
        pytest.fail(f"{argv}: stdout is not one JSON document: {captured.out[:500]!r}")


def test_json_output_is_one_document_and_records_go_to_stderr(
    keys: None, dsn: str, conn: psycopg.Connection[Any], tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    conn.execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
    conn.execute("INSERT INTO items VALUES (1, 'a')")
    base = ["--dsn", dsn]
    # A refused command on a live database: one line, no traceback.
    refused = [*base, "install", "--writer-role", "no_such_role"]
    assert "no_such_role" in _one_error(capsys, main(refused), refused)
    assert _json(capsys, main([*base, "install", "--json"]), ["install"])["version"] >= 1
    assert _json(capsys, main([*base, "track", "items", "--json"]), ["track"])[
        "tracked"][0]["table"] == "public.items"
    assert _json(capsys, main([*base, "retrack", "--json"]), ["retrack"])["tracked"]
    assert "ok" in _json(capsys, main([*base, "status", "--json"]), ["status"])
    conn.execute("UPDATE items SET name = 'b'")
    assert _json(capsys, main([*base, "seal", "--json"]), ["seal"])["sealed"] >= 1
    assert "status" in _json(capsys, main([*base, "verify", "--json"]), ["verify"])
    assert set(_json(capsys, main(["keygen", "--export", "--json"]), ["keygen"])) == {
        "AUDIT_EXPORT_KEY", "AUDIT_EXPORT_PUBLIC_KEYS"}
    out = tmp_path / "e.ndjson"
    exported = _json(capsys, main([*base, "export", "--from", "2000-01-01T00:00:00Z",
                                   "--to", "2100-01-01T00:00:00Z", "-o", str(out),
                                   "--json"]), ["export"])
    assert exported["count"] >= 1
    hold = _json(capsys, main([*base, "hold", "add", "--reason", "lawsuit", "--user", "u1",
                               "--json"]), ["hold add"])
    assert isinstance(_json(capsys, main([*base, "hold", "list", "--json"]), ["hold list"]),
                      list)
    assert _json(capsys, main([*base, "hold", "remove", str(hold["hold_id"]), "--reason",
                               "settled", "--json"]), ["hold remove"])["released"]
    assert "partitions" in _json(capsys, main([*base, "retention", "apply", "--policy", "7y",
                                               "--json"]), ["retention apply"])
    assert "created" in _json(capsys, main([*base, "partitions", "ensure", "--json"]),
                              ["partitions ensure"])
    assert isinstance(_json(capsys, main([*base, "partitions", "list", "--json"]),
                            ["partitions list"]), list)
    assert "stored" in _json(capsys, main([*base, "replay", "--spool",
                                           str(tmp_path / "s.jsonl"), "--json"]), ["replay"])
    assert _json(capsys, main([*base, "untrack", "items", "--json"]), ["untrack"]) == {
        "untracked": ["items"]}
