"""Exports verified offline against the integrity chain and its checkpoints."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import admin_app
from audit_mw.admin._export_format import csv_row, parse_csv_record, restore_cell
from audit_mw.admin.export import ExportKey, verify_export, write_export
from audit_mw.admin.query import parse_export_range
from audit_mw.cli import main
from audit_mw.integrity import KeyRing, seal
from tests._admin import allow, anyio_backend, client, insert_events, pool, reader_dsn

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = pytest.mark.db

SECRET = b"s" * 32
SIGNING = Ed25519PrivateKey.from_private_bytes(b"\x07" * 32)
PUBLIC = base64.b64encode(SIGNING.public_key().public_bytes_raw()).decode()
SEALER = KeyRing.build({"k1": SECRET}, current_kid="k1", signing_key=SIGNING)
EXPORT_KEY = ExportKey("k1", SECRET)
HMAC_ONLY = KeyRing.build({"k1": SECRET})
PUBLIC_ONLY = KeyRing.build(public_keys=[PUBLIC])
RANGE = {"from": "2024-01-01T00:00:00Z", "to": "2024-02-01T00:00:00Z"}
INSIDE, OUTSIDE = "2024-01-15T10:00:00.25Z", "2023-06-01T00:00:00Z"

# Values whose text forms are easy to get wrong: JSON null against SQL NULL, a bare JSON
# string, trailing zeros, an empty string against NULL, spreadsheet formulas, a leading '.
TRICKY: list[dict[str, Any]] = [
    {"app_user_id": "alice", "new_values": '{"price": 1.50, "tiny": 1e-7, "big": 1E+2}',
     "metadata": "null", "changed_fields": ["price", None]},
    {"app_user_id": "", "record_id": "=HYPERLINK(\"x\")", "new_values": '"just a string"',
     "old_values": "[1, 2.50, null]", "client_ip": "10.0.0.0/8"},
    {"app_user_id": "'quoted", "reason": "line\nbreak\r\nand \"quotes\", commas",
     "context_extra": '{"é": "ü", "ctl": "\\u0001"}', "client_ip": "::ffff:1.2.3.4"},
    {"kind": "auth", "action": "login_failed", "success": False, "metadata": "-5",
     "app_user_id": "-bob"},
]


def _trail(conn: psycopg.Connection[Any], *, unsealed: bool = True) -> None:
    """In-range events interleaved in chain order with out-of-range ones, sealed in small
    batches (so that links fill gaps and bridge to a checkpoint), then unsealed ones."""
    for n in range(6):
        with conn.transaction():
            insert_events(conn, [{**row, "occurred_at": INSIDE} for row in TRICKY[:3]])
            insert_events(conn, [{**TRICKY[3], "occurred_at": INSIDE,
                                  "event_id": str(uuid.uuid4())}])
            insert_events(conn, [{"occurred_at": OUTSIDE, "app_user_id": f"out{n}"}])
    insert_events(conn, [{"occurred_at": OUTSIDE, "app_user_id": "after"}] * 5)
    result = seal(conn, SEALER, batch_size=7)
    assert result.sealed == 35
    assert len(result.checkpoints) == 5
    if unsealed:
        insert_events(conn, [{"occurred_at": INSIDE, "app_user_id": "late"}] * 2)


def _export(conn: psycopg.Connection[Any], tmp_path: Path, fmt: str) -> list[bytes]:
    export = parse_export_range([*RANGE.items(), ("format", fmt)])
    path = tmp_path / f"export.{fmt}"
    with path.open("wb") as out:
        write_export(conn, export, EXPORT_KEY, out)
    return path.read_bytes().splitlines(keepends=True)


def _manifest(lines: list[bytes]) -> dict[str, Any]:
    last = lines[-1].decode()
    if last.startswith("{"):
        found: dict[str, Any] = json.loads(last)["manifest"]
        return found
    cells = parse_csv_record(last.rstrip("\r\n"))
    assert cells is not None
    assert cells[1] is not None
    return json.loads(cells[1])


def _forge(lines: list[bytes], manifest: dict[str, Any] | None = None) -> list[bytes]:
    """What an attacker without the key does: recompute the digest (and counts), keep the
    old MAC."""
    manifest = dict(manifest or _manifest(lines))
    body = lines[:-1]
    manifest["sha256"] = hashlib.sha256(b"".join(body)).hexdigest()
    text = json.dumps(manifest, separators=(",", ":"))
    if lines[-1].startswith(b"{"):
        last = json.dumps({"manifest": manifest}, separators=(",", ":")).encode() + b"\n"
    else:
        last = b"#manifest," + csv_row([text]).encode()
    return [*body, last]


def _sealed_lines(lines: list[bytes]) -> list[int]:
    """Indexes of the lines of sealed events (a CSV record here is one line when it holds
    no line break; the tricky reason makes some span three)."""
    found = []
    for i, line in enumerate(lines[1:-1], start=1):
        text = line.decode()
        if text.startswith("{"):
            if json.loads(text)["chain_position"] is not None:
                found.append(i)
        elif text.startswith('"') and text.count('"') % 2 == 0:
            cells = parse_csv_record(text.rstrip("\r\n"))
            if cells is not None and len(cells) > 26 and cells[26] is not None:
                found.append(i)
    return found


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_untouched_export_verifies_against_the_chain(
    conn: psycopg.Connection[Any], tmp_path: Path, fmt: str
) -> None:
    _trail(conn)
    lines = _export(conn, tmp_path, fmt)
    manifest = _manifest(lines)
    assert (manifest["count"], manifest["sealed"], manifest["unsealed"]) == (26, 24, 2)
    chain, checkpoint = manifest["chain"], manifest["checkpoint"]
    assert checkpoint["position"] >= chain["last_position"]
    assert checkpoint["signature"]
    assert checkpoint["mac"]
    assert checkpoint["key_id"] == "k1"
    assert checkpoint["chain_id"] == chain["chain_id"]
    # The out-of-range events between the exported ones, and those up to the checkpoint.
    link_positions = [link[0] for link in chain["links"]]
    assert len(link_positions) == chain["last_position"] - chain["first_position"] + 1 - 24 + (
        checkpoint["position"] - chain["last_position"])
    assert link_positions[-1] == checkpoint["position"] > chain["last_position"]

    for keys in (HMAC_ONLY, KeyRing.build({"k1": SECRET}, public_keys=[PUBLIC])):
        result = verify_export(lines, keys)
        assert result.ok, result.problems
        assert (result.status, result.sealed, result.unsealed) == ("valid", 24, 2)
        assert result.chain_checked == 24
    # With the public key alone the sealed events verify, the unsealed ones cannot.
    result = verify_export(lines, PUBLIC_ONLY)
    assert (result.status, result.exit_code) == ("unverifiable", 2)
    assert "nothing says the file is complete" in result.problems[0]


def test_checkpoint_key_alone_never_says_ok_for_an_hmac_manifest(
    conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The chain alone cannot say that nothing was left out (an event turned into a link
    passes it): without the manifest's key the answer is "cannot verify", exit 2."""
    _trail(conn, unsealed=False)
    lines = _export(conn, tmp_path, "ndjson")
    result = verify_export(lines, PUBLIC_ONLY)
    assert (result.status, result.exit_code, result.chain_checked) == ("unverifiable", 2, 24)
    assert "nothing says the file is complete" in result.problems[0]

    # The auditor's command line: no database, no HMAC key, only the public key.
    for name in ("AUDIT_HMAC_KEY", "AUDIT_HMAC_KEYS", "AUDIT_VERIFY_KEYS"):
        monkeypatch.delenv(name, raising=False)
    path = tmp_path / "handed-over.ndjson"
    path.write_bytes(b"".join(lines))
    key_file = tmp_path / "audit.pub"
    key_file.write_text(PUBLIC + "\n")
    assert main(["verify-export", "--public-key", str(key_file), str(path)]) == 2
    out = capsys.readouterr().out
    assert "FAILED (unverifiable)" in out
    assert main(["verify-export", str(path)]) == 2
    capsys.readouterr()
    monkeypatch.setenv("AUDIT_VERIFY_KEYS", PUBLIC)
    assert main(["verify-export", "--json", str(path)]) == 2
    assert json.loads(capsys.readouterr().out)["status"] == "unverifiable"

    # A checkpoint with a wrong signature is refused.
    manifest = _manifest(lines)
    signature = bytearray(bytes.fromhex(manifest["checkpoint"]["signature"]))
    signature[0] ^= 1
    manifest["checkpoint"] = {**manifest["checkpoint"], "signature": signature.hex()}
    bad = tmp_path / "bad-signature.ndjson"
    bad.write_bytes(b"".join(_forge(lines, manifest)))
    assert main(["verify-export", "--json", str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["status"] == "tampered"
    assert any(p.startswith("bad_checkpoint:") and "signature is invalid" in p
               for p in report["problems"])
    other = base64.b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    assert verify_export(lines, KeyRing.build(public_keys=[other])).status == "unverifiable"


def _edit(lines: list[bytes], index: int, old: bytes, new: bytes) -> list[bytes]:
    changed = list(lines)
    assert old in changed[index]
    changed[index] = changed[index].replace(old, new, 1)
    return changed


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_tampering_is_named_even_with_a_recomputed_digest(
    conn: psycopg.Connection[Any], tmp_path: Path, fmt: str
) -> None:
    _trail(conn, unsealed=False)
    lines = _export(conn, tmp_path, fmt)
    sealed = _sealed_lines(lines)
    alice = next(i for i in sealed if b"alice" in lines[i])
    victim_id = json.loads(lines[alice])["id"] if fmt == "ndjson" else int(
        restore_cell(str((parse_csv_record(lines[alice].decode().rstrip("\r\n")) or [""])[0])))

    edited = _forge(_edit(lines, alice, b"alice", b"mallory"))
    for keys in (PUBLIC_ONLY, HMAC_ONLY):
        result = verify_export(edited, keys)
        assert (result.status, result.exit_code) == ("tampered", 1)
        assert result.problems[0] == (
            f"modified: line {alice + 1}: event {victim_id} (position "
            f"{_position(lines, alice)}) was modified: its content differs from what was sealed")
    # With the key, the recomputed digest does not carry a valid MAC either.
    assert any("MAC does not match" in p for p in verify_export(edited, HMAC_ONLY).problems)

    # An edited number keeps its value for a float, not for the chain: 1.50 is not 1.5.
    if fmt == "ndjson":
        assert not verify_export(_forge(_edit(lines, alice, b"1.50", b"1.5")), PUBLIC_ONLY).ok

    middle = sealed[len(sealed) // 2]
    removed = _forge([*lines[:middle], *lines[middle + 1:]])
    result = verify_export(removed, PUBLIC_ONLY)
    assert result.status == "tampered"
    assert result.problems[0].startswith(f"missing: chain position {_position(lines, middle)} "
                                         f"is missing before line {middle + 1}")

    added = _forge([*lines[:middle + 1], lines[middle], *lines[middle + 1:]])
    result = verify_export(added, PUBLIC_ONLY)
    assert result.problems[0].startswith(f"inserted: line {middle + 2}: event")

    first, second = sealed[2], sealed[3]
    if second == first + 1:
        swapped = list(lines)
        swapped[first], swapped[second] = swapped[second], swapped[first]
        result = verify_export(_forge(swapped), PUBLIC_ONLY)
        kinds = {p.split(":")[0] for p in result.problems}
        assert "reordered" in kinds, result.problems

    # The last sealed line removed: the bridge to the checkpoint no longer starts where the
    # slice ends.
    result = verify_export(_forge([*lines[:sealed[-1]], *lines[sealed[-1] + 1:]]), PUBLIC_ONLY)
    assert result.problems[0].startswith("missing: chain position")

    # Links altered: the walk misses the checkpoint's head.
    manifest = _manifest(lines)
    links = [list(link) for link in manifest["chain"]["links"]]
    links[-1][2] = "00" * 32
    manifest["chain"] = {**manifest["chain"], "links": links}
    result = verify_export(_forge(lines, manifest), PUBLIC_ONLY)
    assert result.problems[0].startswith("modified: the exported entries do not reach the head")


def _position(lines: list[bytes], index: int) -> int:
    text = lines[index].decode()
    if text.startswith("{"):
        return int(json.loads(text)["chain_position"])
    cells = parse_csv_record(text.rstrip("\r\n"))
    assert cells is not None
    assert cells[26] is not None
    return int(cells[26])


@pytest.mark.anyio
async def test_http_export_carries_the_chain(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any]
) -> None:
    _trail(conn)
    app = admin_app(pool, authorize=allow, export_key=EXPORT_KEY)
    async with client(app) as http:
        for fmt in ("ndjson", "csv"):
            response = await http.get("/export", params={**RANGE, "format": fmt})
            assert response.status_code == 200
            lines = response.content.splitlines(keepends=True)
            result = verify_export(lines, KeyRing.build({"k1": SECRET}, public_keys=[PUBLIC]))
            assert (result.status, result.chain_checked) == ("valid", 24), result.problems
