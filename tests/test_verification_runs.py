"""Recorded verification runs: verify(record=True), `verify --record`, and /audit/verify."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import admin_app
from audit_mw.cli import main
from audit_mw.errors import ConfigurationError, VerificationError
from audit_mw.integrity import seal, verify
from tests._admin import allow, anyio_backend, client, pool, reader_dsn
from tests._integrity import HMAC_SECRET, build_trail, env_for, event_at, guards_off, hmac_keys

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = pytest.mark.db


def _runs(conn: psycopg.Connection[Any]) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT status, checked, unsealed, head_position, kind, first_bad_id,"
                        " detail FROM audit.verification_runs ORDER BY id").fetchall()


@pytest.mark.anyio
async def test_recorded_runs_are_served_by_verify(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        assert (await http.get("/verify")).json()["last_verification"] is None

    build_trail(conn, 120)
    seal(conn, hmac_keys(), batch_size=50)
    conn.execute("INSERT INTO audit.events (kind, action) VALUES ('data', 'INSERT')")
    good = verify(conn, hmac_keys(), record=True)
    assert _runs(conn) == [("valid_unanchored", good.checked, 1, good.head_position, None,
                            None, good.detail)]

    victim = event_at(conn, 17)
    with guards_off(conn, "events"):
        conn.execute("UPDATE audit.events SET app_user_id = 'x' WHERE id = %s", [victim])
    bad = verify(conn, hmac_keys(), record=True)
    assert (bad.kind, bad.first_bad_id) == ("modified", victim)

    async with client(app) as http:
        status = (await http.get("/verify")).json()
    last = status["last_verification"]
    assert (last["status"], last["valid"], last["kind"], last["first_bad_id"],
            last["first_bad_position"]) == ("tampered", False, "modified", victim, 17)
    assert last["chain_id"] == good.chain_id == bad.chain_id
    assert last["finished_at"] >= last["started_at"]
    assert last["db_role"] == "postgres"
    assert status["sealed_position"] == good.head_position


def test_runs_are_append_only_and_need_the_owner(
    conn: psycopg.Connection[Any], reader_dsn: str
) -> None:
    build_trail(conn, 30)
    seal(conn, hmac_keys())
    verify(conn, hmac_keys(), record=True)
    for statement in ("UPDATE audit.verification_runs SET status = 'valid'",
                      "DELETE FROM audit.verification_runs",
                      "TRUNCATE audit.verification_runs"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
            conn.execute(statement)
    # The admin routes' role reads the trail; it may not record a verification.
    with (psycopg.connect(reader_dsn, autocommit=True) as reader,
          pytest.raises(ConfigurationError, match="schema owner")):
        verify(reader, hmac_keys(), record=True)
    assert len(_runs(conn)) == 1

    # A verification that cannot run is recorded as such.
    conn.execute("INSERT INTO audit.chains (chain_id) VALUES (%s)", [uuid.uuid4()])
    with pytest.raises(VerificationError, match="2 chains"):
        verify(conn, hmac_keys(), record=True)
    status, checked, *_, detail = _runs(conn)[-1]
    assert (status, checked) == ("unverifiable", 0)
    assert "holds 2 chains" in detail


def test_cli_verify_record(
    conn: psycopg.Connection[Any], dsn: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str], tmp_path: Path,
) -> None:
    for name, value in env_for({"k1": HMAC_SECRET}, "k1").items():
        monkeypatch.setenv(name, value)
    build_trail(conn, 40)
    assert main(["--dsn", dsn, "seal", "--checkpoint-file", str(tmp_path / "cp.jsonl")]) == 0
    capsys.readouterr()
    assert main(["--dsn", dsn, "verify", "--record", "--checkpoint-file",
                 str(tmp_path / "cp.jsonl")]) == 0
    assert "recorded as verification run 1" in capsys.readouterr().out
    assert main(["--dsn", dsn, "verify", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "valid_unanchored"
    assert [r[0] for r in _runs(conn)] == ["valid"]  # without --record, nothing recorded
