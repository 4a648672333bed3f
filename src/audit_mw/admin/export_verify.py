"""Offline verification of an export file: no database, only the file and the keys.

:func:`verify_export` checks, in one streaming pass after reading the manifest (the last
line):

1. every sealed event against the chain: its content hash and entry hash are recomputed
   from its values, linked to the previous entry (the manifest's ``previous_entry_hash``
   and ``links`` fill the positions whose events are outside the range) up to the covering
   checkpoint, whose head must be reached and whose HMAC (``AUDIT_HMAC_KEY(S)``) or Ed25519
   signature (a public key) must verify. An edited, removed, added or moved sealed line is
   named by its line number and event id, even when the manifest's digest was recomputed;
2. the order (chain order: ``(txid, id)`` increasing; sealed events before unsealed ones)
   and that every event lies in the stated range;
3. the manifest: its Ed25519 signature with the export public key (or, for a manifest the
   operator's tools authenticated with an HMAC key, its MAC), the SHA-256 of the lines, the
   counts, the first and last entries. The signed digest covers every byte before the
   manifest, so an event removed, added, edited or moved, or a truncated file, is caught
   even where the chain alone could be bridged by forged links.

Statuses: ``valid`` (all of it), ``tampered`` (exit 1: content or manifest altered; this wins
over anything else found), ``unverifiable`` (exit 2: the manifest's signature or MAC, or the
checkpoint, could not be checked because its key was not given or does not match). There is
no "ok" without an authenticated manifest: the manifest is what says nothing was left out.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit_mw.admin._export_format import (
    CSV_MANIFEST,
    READ_VERSIONS,
    ExportKey,
    ExportSigningKey,
    MerkleRoot,
    chain_fields,
    check_manifest_signature,
    csv_records,
    event_content,
    export_key_id,
    parse_csv_record,
    public_key_from_text,
    restore_cell,
)
from audit_mw.integrity.canonical import parse_json
from audit_mw.integrity.checkpoints import Checkpoint
from audit_mw.integrity.keys import KeyRing
from audit_mw.integrity.segment import Link, SegmentVerifier

__all__ = ["ExportVerifyResult", "verify_export"]

KEY_ENV: Final = "AUDIT_HMAC_KEY"
Keys = KeyRing | ExportKey | ExportSigningKey | Mapping[str, ExportKey] | None
ExportPublicKeys = Iterable[Ed25519PublicKey | str] | Mapping[str, Ed25519PublicKey] | None


@dataclass(frozen=True, slots=True)
class ExportVerifyResult:
    """The outcome of :func:`verify_export`: ``ok``, or the problems found."""

    ok: bool
    problems: tuple[str, ...]
    count: int
    manifest: Mapping[str, Any] | None
    status: str = "tampered"
    sealed: int = 0
    unsealed: int = 0
    chain_checked: int = 0
    warnings: tuple[str, ...] = field(default=())

    @property
    def exit_code(self) -> int:
        """0 valid, 1 tampered, 2 could not verify."""
        return {"valid": 0, "tampered": 1}.get(self.status, 2)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        manifest = self.manifest or {}
        return {"ok": self.ok, "status": self.status, "count": self.count,
                "sealed": self.sealed, "unsealed": self.unsealed,
                "chain_checked": self.chain_checked, "problems": list(self.problems),
                "warnings": list(self.warnings), "from": manifest.get("from"),
                "to": manifest.get("to"), "first": manifest.get("first"),
                "last": manifest.get("last"), "checkpoint": manifest.get("checkpoint")}


def _key_ring(keys: Keys) -> KeyRing:
    if keys is None:
        return KeyRing()
    if isinstance(keys, KeyRing):
        return keys
    if isinstance(keys, ExportSigningKey):
        return KeyRing()
    found = [keys] if isinstance(keys, ExportKey) else list(keys.values())
    return KeyRing.build({k.key_id: k.secret for k in found})


def _export_publics(keys: Keys, given: ExportPublicKeys) -> dict[str, Ed25519PublicKey]:
    found: dict[str, Ed25519PublicKey] = {}
    if isinstance(keys, ExportSigningKey):
        found[keys.key_id] = keys.public
    if isinstance(given, Mapping):
        found.update(given)
    elif given is not None:
        for key in given:
            obj = public_key_from_text(key) if isinstance(key, str) else key
            found[export_key_id(obj)] = obj
    return found


def _read_lines(source: Path | str | Iterable[bytes]) -> tuple[Iterable[bytes], bytes]:
    """The file's lines (re-iterable) and its last line."""
    if isinstance(source, Path | str):
        path = Path(source)
        last = b""
        with path.open("rb") as handle:
            for line in handle:
                last = line

        class _File:
            def __iter__(self) -> Iterator[bytes]:
                with path.open("rb") as handle:
                    yield from handle

        return _File(), last
    lines = source if isinstance(source, list) else list(source)
    return lines, (lines[-1] if lines else b"")


def _parse_manifest(line: bytes) -> dict[str, Any] | None:
    text = line.decode("utf-8", errors="replace").rstrip("\r\n")
    try:
        if text.startswith('{"manifest"'):
            found = json.loads(text)["manifest"]
        elif text.startswith(CSV_MANIFEST + ","):
            cells = parse_csv_record(text)
            found = json.loads(cells[1] or "") if cells and len(cells) == 2 else None
        else:
            return None
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return found if isinstance(found, dict) else None


class _Check:
    """The state of one verification: problems, counts, the chain walk."""

    def __init__(self, manifest: Mapping[str, Any] | None, ring: KeyRing,
                 max_problems: int) -> None:
        self.manifest = manifest
        self.export_publics: dict[str, Ed25519PublicKey] = {}
        self.merkle = MerkleRoot()
        self.max_problems = max_problems
        self.problems: list[str] = []
        self.warnings: list[str] = []
        self.unverifiable: list[str] = []
        self.count = self.sealed = self.unsealed = 0
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None
        self.span: list[datetime] = []
        self.order: tuple[int, int] | None = None
        self.unsealed_where: str | None = None
        self.inserted_reported = False
        self.segment = self._segment(manifest, ring) if manifest is not None else None

    def problem(self, kind: str, detail: str) -> None:
        self.problems.append(f"{kind}: {detail}")

    def _segment(self, manifest: Mapping[str, Any], ring: KeyRing) -> SegmentVerifier | None:
        chain = manifest.get("chain")
        if chain is None:
            if manifest.get("sealed"):
                self.problem("bad_checkpoint", "the manifest counts sealed events but has no "
                                               "chain section")
            return None
        try:
            links = [Link(int(p), int(i), bytes.fromhex(h)) for p, i, h in chain["links"]]
            cp_json = manifest.get("checkpoint")
            if not isinstance(cp_json, dict):
                self.problem("bad_checkpoint", "no checkpoint covers the exported entries")
                return None
            return SegmentVerifier(
                chain_id=str(chain["chain_id"]), first_position=int(chain["first_position"]),
                previous_hash=bytes.fromhex(chain["previous_entry_hash"]), links=links,
                checkpoint=Checkpoint.from_json(cp_json), keys=ring)
        except (KeyError, TypeError, ValueError) as exc:
            self.problem("bad_checkpoint", f"the manifest's chain section is malformed ({exc})")
            return None

    def row(self, where: str, event: dict[str, Any], parsed: bool) -> None:
        self.count += 1
        try:
            event_id = int(event["id"])
            occurred = datetime.fromisoformat(str(event["occurred_at"]))
            txid = int(event["txid"])
            fields = chain_fields(event)
        except (KeyError, TypeError, ValueError) as exc:
            self.problem("modified", f"{where}: the event cannot be read ({exc})")
            return
        entry = {"id": event_id, "occurred_at": event["occurred_at"],
                 "chain_position": fields.position}
        self.first = self.first or entry
        self.last = entry
        if occurred.tzinfo is None:
            self.problem("modified", f"{where}: event {event_id} has a timestamp without a "
                                     "time zone")
        else:
            self.span = ([min(self.span[0], occurred), max(self.span[1], occurred)]
                         if self.span else [occurred, occurred])
        # Sealed events are ordered by their chain positions (the segment walk names what
        # moved); the unsealed ones, which follow them, by (txid, id).
        if fields.position is None and self.order is not None and (
                txid, event_id) <= self.order:
            self.problem("reordered", f"{where}: event {event_id} is out of chain order")
        self.order = (txid, event_id)
        if fields.position is None:
            self.unsealed += 1
            self.unsealed_where = self.unsealed_where or f"{where} (event {event_id})"
            return
        self.sealed += 1
        if self.unsealed_where is not None and not self.inserted_reported:
            self.inserted_reported = True
            self.problem("inserted", f"{self.unsealed_where} is not sealed but comes before "
                                     f"sealed events ({where}): it was added")
        if self.segment is None:
            return
        try:
            _, content = event_content(event, fields.json_nulls, parsed=parsed)
        except (KeyError, TypeError, ValueError) as exc:
            self.problem("modified", f"{where}: event {event_id} cannot be read ({exc})")
            return
        self.segment.feed(fields.position, event_id, content, fields.content_hash,
                          fields.entry_hash, where)

    def done(self) -> bool:
        return len(self.problems) > self.max_problems


def _events(lines: Iterable[bytes], fmt: str, check: _Check) -> None:
    text_lines = (line.decode("utf-8", errors="replace") for line in lines)
    if fmt == "csv":
        _csv_events(text_lines, check)
        return
    first = next(text_lines, None)
    try:
        head = json.loads(first) if first else None
    except ValueError:
        head = None
    if not isinstance(head, dict) or head.get("audit_mw_export") not in READ_VERSIONS:
        check.problem("modified", "line 1 is not an audit_mw export header (format "
                                  f"version {' or '.join(map(str, sorted(READ_VERSIONS)))})")
    for number, line in enumerate(text_lines, start=2):
        check.merkle.add((line[:-1] if line.endswith("\n") else line).encode())
        try:
            event = parse_json(line)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            check.problem("modified", f"line {number} is not a JSON object")
        else:
            check.row(f"line {number}", event, parsed=True)
        if check.done():
            return


def _csv_events(text_lines: Iterator[str], check: _Check) -> None:
    records = csv_records(text_lines)
    head = next(records, None)
    header = parse_csv_record(head[1]) if head else None
    if not header or any(name is None for name in header):
        check.problem("modified", "line 1 is not a CSV header")
        return
    names = [str(name) for name in header]
    for number, text in records:
        check.merkle.add(text.encode())
        cells = parse_csv_record(text)
        if cells is None or len(cells) != len(names):
            check.problem("modified", f"line {number}: not a record of {len(names)} cells")
        else:
            check.row(f"line {number}", {
                name: None if cell is None else restore_cell(cell)
                for name, cell in zip(names, cells, strict=True)}, parsed=False)
        if check.done():
            return


def _lines_but_last(lines: Iterable[bytes], digest: Any) -> Iterator[bytes]:
    previous: bytes | None = None
    for line in lines:
        if previous is not None:
            digest.update(previous)
            yield previous
        previous = line


def verify_export(
    source: Path | str | Iterable[bytes],
    keys: Keys,
    *,
    export_public_keys: ExportPublicKeys = None,
    max_problems: int = 20,
) -> ExportVerifyResult:
    """Check an export file offline: its sealed events against the chain and checkpoint,
    its order and range, and its manifest (MAC, digest, counts).

    ``source`` is a path or the file's lines as bytes. ``keys`` is a :class:`KeyRing` (HMAC
    keys for the manifest and the checkpoint, Ed25519 public keys for signed checkpoints),
    or the export key(s) alone (:class:`ExportKey`, or keys by id as from
    :func:`~audit_mw.admin.export.export_keys_from_env`). ``export_public_keys``: the
    Ed25519 public keys of the export keys (objects or base64 text), which check a signed
    manifest; an :class:`ExportSigningKey` given as ``keys`` counts as its public key.
    """
    ring = _key_ring(keys)
    publics = _export_publics(keys, export_public_keys)
    lines, last_line = _read_lines(source)
    manifest = _parse_manifest(last_line)
    check = _Check(manifest, ring, max_problems)
    check.export_publics = publics
    digest = hashlib.sha256()
    body = _lines_but_last(lines, digest)
    peek = next(body, None)
    if peek is None:
        return ExportVerifyResult(False, ("modified: the file has fewer than two lines: not an "
                                    "export",), 0, None)
    fmt = "ndjson" if peek.startswith(b"{") else "csv"

    def chained() -> Iterator[bytes]:
        yield peek
        yield from body

    _events(chained(), fmt, check)
    for _ in body:  # after too many problems: the digest still covers the whole file
        pass
    if manifest is None:
        check.problem("modified", "the last line is not a manifest: the export is truncated "
                                  "or altered")
        return _result(check, None)
    if check.segment is not None:
        check.segment.finish()
        check.problems.extend(f"{f.kind}: {f.detail}" for f in check.segment.findings)
        check.unverifiable.extend(check.segment.unverifiable)
    _check_manifest(manifest, ring, check, sha256=digest.hexdigest(), fmt=fmt)
    return _result(check, manifest)


def _result(check: _Check, manifest: Mapping[str, Any] | None) -> ExportVerifyResult:
    segment = check.segment
    chained = segment.checked if segment is not None and not segment.findings else 0
    if check.problems:
        status = "tampered"
    elif check.unverifiable:
        status = "unverifiable"
    else:
        status = "valid"
    problems = check.problems[: check.max_problems] + (
        check.unverifiable if status == "unverifiable" else [])
    return ExportVerifyResult(
        ok=status == "valid", problems=tuple(problems),
        count=check.count, manifest=manifest, status=status, sealed=check.sealed,
        unsealed=check.unsealed, chain_checked=chained, warnings=tuple(check.warnings))


def _check_manifest(
    manifest: Mapping[str, Any], ring: KeyRing, check: _Check, *, sha256: str, fmt: str
) -> None:
    if "signature" in manifest:
        _check_signature(manifest, check)
    elif "mac" in manifest:
        _check_mac(manifest, ring, check)
    else:
        check.problem("modified", "the manifest carries neither a signature nor a MAC: it "
                                  "was stripped or forged")
    if manifest.get("format") != fmt:
        check.problem("modified", f"the manifest says format {manifest.get('format')!r}, "
                                  f"the file is {fmt}")
    root = manifest.get("events_merkle_root")
    if root is not None and root != check.merkle.hexdigest():
        check.problem("modified", "the Merkle root of the event lines does not match the "
                                  "manifest: lines were edited, removed, added or reordered")
    if manifest.get("sha256") != sha256:
        check.problem("modified", "the SHA-256 of the exported lines does not match the "
                                  "manifest: lines were edited, removed or added")
    for name, seen in (("count", check.count), ("sealed", check.sealed),
                       ("unsealed", check.unsealed)):
        if manifest.get(name) != seen:
            check.problem("modified", f"the manifest says {name} {manifest.get(name)}, the "
                                      f"file holds {seen}")
    for name, entry in (("first", check.first), ("last", check.last)):
        if (manifest.get(name) or {}).get("id") != (entry or {}).get("id"):
            check.problem("modified", f"the {name} entry does not match the manifest")
    _check_span(manifest, check)


def _check_signature(manifest: Mapping[str, Any], check: _Check) -> None:
    found = check_manifest_signature(manifest, check.export_publics)
    if found is None:
        return
    kind, detail = found
    if kind == "key_mismatch" and not check.export_publics:
        check.unverifiable.append(
            "no export public key to check the manifest signature: give --export-public-key "
            "or set AUDIT_EXPORT_PUBLIC_KEYS; without it nothing says the file is complete")
    elif kind == "key_mismatch":
        check.unverifiable.append(f"key mismatch: {detail}")
    else:
        check.problem(kind, detail)


def _check_mac(manifest: Mapping[str, Any], ring: KeyRing, check: _Check) -> None:
    verification = manifest.get("verification")
    key_id = verification.get("key_id") if isinstance(verification, dict) else None
    secret = ring.hmac_keys.get(str(key_id))
    if secret is None:
        missing = (f"no key to check the manifest MAC: set {KEY_ENV}" if not ring.hmac_keys
                   else f"key mismatch: the manifest was authenticated with key {key_id!r}, "
                        "which is not given")
        check.unverifiable.append(
            f"{missing}; without it nothing says the file is complete")
    elif not hmac.compare_digest(str(manifest.get("mac", "")),
                                 ExportKey(str(key_id), secret).mac(manifest)):
        check.problem("modified", "the manifest MAC does not match: the manifest was "
                                  "altered or authenticated with another key")


def _check_span(manifest: Mapping[str, Any], check: _Check) -> None:
    if not check.span:
        return
    try:
        start = datetime.fromisoformat(str(manifest.get("from")))
        end = datetime.fromisoformat(str(manifest.get("to")))
    except ValueError:
        check.problem("modified", "the manifest range is not a pair of timestamps")
        return
    if check.span[0] < start or check.span[1] >= end:
        check.problem("modified", "entries fall outside the range the manifest states")
