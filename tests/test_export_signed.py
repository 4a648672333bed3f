"""Exports signed with the Ed25519 export key: checked with public keys alone.

An attacker who edits the file can recompute every digest, count and link of the manifest;
what he cannot do without the export key is sign it again. Each doctored file must fail the
public-key check with exit 1, and nothing short of an authenticated manifest is "ok".
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin import admin_app
from audit_mw.admin._export_format import MerkleRoot, parse_csv_record
from audit_mw.admin.export import ExportSigningKey, verify_export, write_export
from audit_mw.admin.query import parse_export_range
from audit_mw.cli import main
from audit_mw.integrity import KeyRing
from tests._admin import allow, anyio_backend, client, pool, reader_dsn
from tests.test_export_chain import PUBLIC, RANGE, _sealed_lines, _trail

__all__ = ["anyio_backend", "pool", "reader_dsn"]  # fixtures, used by name

pytestmark = pytest.mark.db

EXPORT_SEED = b"\x2a" * 32
EXPORT_KEY = ExportSigningKey(Ed25519PrivateKey.from_private_bytes(EXPORT_SEED))
EXPORT_PUBLIC = base64.b64encode(EXPORT_KEY.public.public_bytes_raw()).decode()
CHECKPOINT_PUBLIC = KeyRing.build(public_keys=[PUBLIC])


def _export(conn: psycopg.Connection[Any], tmp_path: Path, fmt: str) -> list[bytes]:
    export = parse_export_range([*RANGE.items(), ("format", fmt)])
    path = tmp_path / f"signed.{fmt}"
    with path.open("wb") as out:
        write_export(conn, export, EXPORT_KEY, out)
    return path.read_bytes().splitlines(keepends=True)


def _manifest(lines: list[bytes]) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(lines[-1])["manifest"]
    return found


def _reforge(body: list[bytes], manifest: dict[str, Any]) -> list[bytes]:
    """Everything an attacker without the export key can recompute: digest and counts."""
    manifest = dict(manifest)
    manifest["sha256"] = hashlib.sha256(b"".join(body)).hexdigest()
    events = [json.loads(line) for line in body[1:]]
    manifest["count"] = len(events)
    manifest["sealed"] = sum(e["chain_position"] is not None for e in events)
    manifest["unsealed"] = manifest["count"] - manifest["sealed"]
    if events:
        first, last = events[0], events[-1]
        manifest["first"] = {"id": first["id"], "occurred_at": first["occurred_at"],
                             "chain_position": first["chain_position"]}
        manifest["last"] = {"id": last["id"], "occurred_at": last["occurred_at"],
                            "chain_position": last["chain_position"]}
    return [*body, json.dumps({"manifest": manifest}, separators=(",", ":")).encode() + b"\n"]


def _doctored(lines: list[bytes]) -> dict[str, list[bytes]]:
    body, manifest = lines[:-1], _manifest(lines)
    sealed = _sealed_lines(lines)
    middle = sealed[len(sealed) // 2]
    victim = json.loads(lines[middle])
    # Removed, and turned into a link: the chain walk alone is satisfied.
    links = [*manifest["chain"]["links"],
             [victim["chain_position"], victim["id"], victim["chain_content_hash"]]]
    linked = {**manifest, "chain": {**manifest["chain"], "links": sorted(links)}}
    alice = next(i for i in sealed if b"alice" in lines[i])
    swapped = list(body)
    swapped[sealed[2]], swapped[sealed[3]] = swapped[sealed[3]], swapped[sealed[2]]
    return {
        "removed_as_link": _reforge([*body[:middle], *body[middle + 1:]], linked),
        "removed": _reforge([*body[:middle], *body[middle + 1:]], manifest),
        "added": _reforge([*body[:middle + 1], body[middle], *body[middle + 1:]], manifest),
        "edited": _reforge([*body[:alice], body[alice].replace(b"alice", b"mallory"),
                            *body[alice + 1:]], manifest),
        "reordered": _reforge(swapped, manifest),
        "truncated_reforged": _reforge(body[:-3], manifest),
        "truncated": body[:-3],
        "manifest_edited": [*body, lines[-1].replace(b'"to":"2024-02-01', b'"to":"2024-01-20')],
        "signature_stripped": [*body, json.dumps({"manifest": {
            k: v for k, v in manifest.items() if k != "signature"}}).encode() + b"\n"],
    }


def test_doctored_exports_fail_the_public_key_check(
    conn: psycopg.Connection[Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name in ("AUDIT_HMAC_KEY", "AUDIT_HMAC_KEYS", "AUDIT_VERIFY_KEYS",
                 "AUDIT_EXPORT_PUBLIC_KEYS", "AUDIT_EXPORT_KEY"):
        monkeypatch.delenv(name, raising=False)
    _trail(conn, unsealed=False)
    lines = _export(conn, tmp_path, "ndjson")
    manifest = _manifest(lines)
    assert manifest["signature"]["key_id"] == EXPORT_KEY.key_id
    assert "mac" not in manifest

    good = verify_export(lines, CHECKPOINT_PUBLIC, export_public_keys=[EXPORT_PUBLIC])
    assert (good.status, good.exit_code, good.chain_checked) == ("valid", 0, 24), good.problems

    pub_file = tmp_path / "export.pub"
    pub_file.write_text(EXPORT_PUBLIC + "\n")
    path = tmp_path / "handed-over.ndjson"
    path.write_bytes(b"".join(lines))
    auditor = ["verify-export", "--public-key", PUBLIC, "--export-public-key", str(pub_file)]
    assert main([*auditor, str(path)]) == 0
    assert "ok: 24 entries" in capsys.readouterr().out

    for attack, doctored in _doctored(lines).items():
        result = verify_export(doctored, CHECKPOINT_PUBLIC, export_public_keys=[EXPORT_PUBLIC])
        assert (result.status, result.exit_code) == ("tampered", 1), (attack, result)
        target = tmp_path / f"{attack}.ndjson"
        target.write_bytes(b"".join(doctored))
        assert main([*auditor, str(target)]) == 1, attack
        assert "FAILED (tampered)" in capsys.readouterr().out
        # Without the export public key, never "ok".
        alone = verify_export(doctored, CHECKPOINT_PUBLIC)
        assert alone.exit_code != 0, attack
        assert not alone.ok, attack

    # The file before any change, with the checkpoint key alone: cannot verify, exit 2.
    assert main(["verify-export", "--public-key", PUBLIC, str(path)]) == 2
    assert "FAILED (unverifiable)" in capsys.readouterr().out


def test_a_signature_by_another_export_key_is_a_key_mismatch(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    _trail(conn, unsealed=False)
    lines = _export(conn, tmp_path, "ndjson")
    other = base64.b64encode(
        Ed25519PrivateKey.generate().public_key().public_bytes_raw()).decode()
    result = verify_export(lines, CHECKPOINT_PUBLIC, export_public_keys=[other])
    assert (result.status, result.exit_code) == ("unverifiable", 2)
    assert any(p.startswith("key mismatch: the manifest is signed with export key "
                            f"{EXPORT_KEY.key_id}") for p in result.problems)
    # After a rotation the old public key still verifies, next to the new one.
    rotated = verify_export(lines, CHECKPOINT_PUBLIC, export_public_keys=[other, EXPORT_PUBLIC])
    assert rotated.status == "valid"


def test_csv_exports_are_signed_too(conn: psycopg.Connection[Any], tmp_path: Path) -> None:
    _trail(conn)
    lines = _export(conn, tmp_path, "csv")
    cells = parse_csv_record(lines[-1].decode().rstrip("\r\n"))
    assert cells is not None
    assert cells[1] is not None
    assert json.loads(cells[1])["signature"]["algorithm"] == "Ed25519"
    result = verify_export(lines, CHECKPOINT_PUBLIC, export_public_keys=[EXPORT_PUBLIC])
    assert result.status == "valid", result.problems
    alice = next(i for i, line in enumerate(lines) if b'"alice"' in line)
    edited = [*lines[:alice], lines[alice].replace(b'"alice"', b'"mallory"'), *lines[alice + 1:]]
    assert verify_export(edited, CHECKPOINT_PUBLIC,
                         export_public_keys=[EXPORT_PUBLIC]).status == "tampered"


@pytest.mark.anyio
async def test_web_app_without_the_sealing_key_serves_exports_that_verify(
    conn: psycopg.Connection[Any], pool: AsyncConnectionPool[Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _trail(conn)
    for name in ("AUDIT_HMAC_KEY", "AUDIT_HMAC_KEYS", "AUDIT_SIGNING_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIT_EXPORT_KEY", base64.b64encode(EXPORT_SEED).decode())
    app = admin_app(pool, authorize=allow)
    async with client(app) as http:
        for fmt in ("ndjson", "csv"):
            response = await http.get("/export", params={**RANGE, "format": fmt})
            assert response.status_code == 200
            exported = response.content.splitlines(keepends=True)
            result = verify_export(exported, CHECKPOINT_PUBLIC,
                                   export_public_keys=[EXPORT_PUBLIC])
            assert (result.status, result.chain_checked) == ("valid", 24), result.problems
    monkeypatch.delenv("AUDIT_EXPORT_KEY")
    # With only the sealing key in the environment, the web app does not sign with it.
    monkeypatch.setenv("AUDIT_HMAC_KEY", "k1:" + base64.b64encode(b"s" * 32).decode())
    async with client(admin_app(pool, authorize=allow)) as http:
        response = await http.get("/export", params=RANGE)
        assert response.status_code == 503
        assert "AUDIT_EXPORT_KEY" in response.json()["message"]


def _rfc6962(leaves: list[bytes]) -> bytes:
    """The Merkle tree head of RFC 6962, section 2.1, written as the RFC says."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    split = 1
    while split * 2 < len(leaves):
        split *= 2
    return hashlib.sha256(b"\x01" + _rfc6962(leaves[:split]) + _rfc6962(leaves[split:])).digest()


def test_the_streamed_merkle_root_is_rfc_6962() -> None:
    for n in range(40):
        leaves = [f"event {i}".encode() for i in range(n)]
        tree = MerkleRoot()
        for leaf in leaves:
            tree.add(leaf)
        assert tree.hexdigest() == _rfc6962(leaves).hex(), n


@pytest.mark.parametrize("fmt", ["ndjson", "csv"])
def test_the_manifest_carries_the_merkle_root_of_the_event_lines(
    conn: psycopg.Connection[Any], tmp_path: Path, fmt: str
) -> None:
    _trail(conn)
    lines = _export(conn, tmp_path, fmt)
    if fmt == "ndjson":
        manifest = _manifest(lines)
        events = [line.rstrip(b"\n") for line in lines[1:-1]]
        assert manifest["events_merkle_root"] == _rfc6962(events).hex()
    result = verify_export(lines, CHECKPOINT_PUBLIC, export_public_keys=[EXPORT_PUBLIC])
    assert result.status == "valid", result.problems
