"""audit-mw seal / verify / keygen, and the keys they read from the environment."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_mw.cli import main
from audit_mw.errors import ConfigurationError
from audit_mw.integrity import KeyRing
from tests._integrity import HMAC_SECRET, OTHER_SECRET, build_trail, env_for, event_at, guards_off

pytestmark = pytest.mark.db


def _set_env(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name in ("AUDIT_HMAC_KEY", "AUDIT_HMAC_KEYS", "AUDIT_SIGNING_KEY", "AUDIT_VERIFY_KEYS",
                 "AUDIT_CHECKPOINT_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_seal_without_a_key_is_a_clear_error(
    dsn: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _set_env(monkeypatch, {})
    assert main(["--dsn", dsn, "seal"]) == 2
    assert "no checkpoint key: set AUDIT_HMAC_KEY" in capsys.readouterr().err
    assert main(["--dsn", dsn, "verify"]) == 2
    assert "no verification key" in capsys.readouterr().err
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM audit.checkpoints").fetchone() == (0,)


def test_seal_verify_tamper_and_rotate(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "cp.jsonl"
    _set_env(monkeypatch, env_for({"k1": HMAC_SECRET}, "k1"))
    build_trail(conn, 300)
    assert main(["--dsn", dsn, "seal", "--checkpoint-file", str(file), "--batch-size",
                 "100"]) == 0
    out, err = capsys.readouterr()
    assert "sealed" in out
    assert "checkpoint(s)" in out
    assert '"audit_checkpoint"' in err
    assert HMAC_SECRET.decode() not in err
    assert len(file.read_text().splitlines()) >= 3

    assert main(["--dsn", dsn, "verify", "--checkpoint-file", str(file), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "valid"
    assert report["anchored"] is True
    assert report["checked"] >= 300
    assert report["unsealed"] == 0

    assert main(["--dsn", dsn, "verify"]) == 0
    assert "status: valid_unanchored" in capsys.readouterr().out

    # Rotation: a new current key; the old one stays for verification.
    _set_env(monkeypatch, env_for({"k2": OTHER_SECRET, "k1": HMAC_SECRET}, "k2"))
    build_trail(conn, 350)
    assert main(["--dsn", dsn, "seal", "--checkpoint-file", str(file)]) == 0
    capsys.readouterr()
    assert main(["--dsn", dsn, "verify", "--checkpoint-file", str(file)]) == 0
    capsys.readouterr()
    key_ids = {r[0] for r in conn.execute("SELECT key_id FROM audit.checkpoints")}
    assert key_ids == {"k1", "k2"}

    victim = event_at(conn, 123)
    with guards_off(conn, "events"):
        conn.execute("UPDATE audit.events SET action = 'DELETE' WHERE id = %s", [victim])
    assert main(["--dsn", dsn, "verify", "--json", "--checkpoint-file", str(file)]) == 1
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert (report["kind"], report["first_bad_id"], report["first_bad_position"]) == (
        "modified", victim, 123)
    alert = json.loads(err.strip().splitlines()[-1])
    assert alert["event"] == "audit_verify_failed"
    assert alert["first_bad_id"] == victim
    assert alert["level"] == "error"


def test_keygen_and_key_parsing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keygen", "--kid", "2026-01"]) == 0
    line = capsys.readouterr().out.strip()
    name, _, value = line.partition("=")
    assert name == "AUDIT_HMAC_KEY"
    ring = KeyRing.from_env({"AUDIT_HMAC_KEY": value})
    assert ring.current_kid == "2026-01"
    assert "2026-01" in repr(ring)
    assert value.split(":")[1] not in repr(ring)

    assert main(["keygen", "--ed25519"]) == 0
    lines = dict(ln.split("=", 1) for ln in capsys.readouterr().out.split())
    ring = KeyRing.from_env({"AUDIT_HMAC_KEY": value, **lines})
    assert ring.signing_kid is not None
    assert ring.signing_kid in ring.public_keys


@pytest.mark.parametrize(("env", "message"), [
    ({"AUDIT_HMAC_KEY": "no-colon"}, "expected KEY_ID:BASE64_SECRET"),
    ({"AUDIT_HMAC_KEY": "k1:c2hvcnQ="}, "shorter than 16 bytes"),
    ({"AUDIT_HMAC_KEY": "k1:!!!"}, "not valid base64"),
    ({"AUDIT_HMAC_KEY": "bad id:" + "a" * 24}, "expected KEY_ID"),
    ({"AUDIT_SIGNING_KEY": "c2hvcnQ="}, "32 bytes"),
])
def test_bad_keys_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        KeyRing.from_env(env)
