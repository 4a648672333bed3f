"""The archive format, shared by the writer and the offline verifier (no pyarrow here).

An archive is a folder (local or any fsspec URL) in the hive layout query engines read::

    _archive.json                               the signed index: every archived month
    year=2024/month=01/events_p202401.parquet   the month's events, in chain order
    year=2024/month=01/_manifest.json           the month's signed manifest

Names starting with ``_`` are skipped by Spark, Trino and Athena, and a ``*.parquet`` glob
(DuckDB) never matches them, so only events are read as data.

Each Parquet row holds every column of ``audit.events`` as a typed value from which its
canonical text (``docs/integrity.md``) follows exactly: ``jsonb`` columns as PostgreSQL prints
them (a string; the string ``null`` is a JSON null, a missing value an SQL NULL), arrays as
lists of strings, ``inet`` as ``abbrev()`` prints it, ``xid8`` as int64, timestamps in UTC
microseconds. Then the chain columns: ``chain_position``, ``chain_content_hash`` and
``chain_entry_hash`` (32 bytes each).

Manifests and the index are JSON objects authenticated like checkpoints: ``mac`` is
HMAC-SHA256 under ``key_id`` of :func:`signed_bytes` (the object without ``mac`` and
``signature``, sorted keys, no spaces, ASCII), and ``signature`` the Ed25519 signature of the
same bytes when a signing key is configured (``sig_key_id`` names its public key).
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

from audit_mw.integrity.canonical import COLUMNS, jsonb_text
from audit_mw.integrity.checkpoints import utc_text
from audit_mw.integrity.keys import KeyRing

FORMAT_VERSION: Final = 1
INDEX_NAME: Final = "_archive.json"
MANIFEST_NAME: Final = "_manifest.json"
JSONB_COLUMNS: Final = frozenset({"old_values", "new_values", "context_extra", "metadata"})
ARRAY_COLUMNS: Final = frozenset({"changed_fields", "context_issues"})
INT_COLUMNS: Final = frozenset({"id", "txid"})
CHAIN_COLUMNS: Final = ("chain_position", "chain_content_hash", "chain_entry_hash")
ALL_COLUMNS: Final = (*COLUMNS, *CHAIN_COLUMNS)
_MONTH_DIR = re.compile(r"year=(\d{4})/month=(\d{2})$")


def month_dir(year: int, month: int) -> str:
    """The hive folder of a month: ``year=2024/month=01``."""
    return f"year={year:04d}/month={month:02d}"


def parse_month_dir(path: str) -> tuple[int, int] | None:
    """``(year, month)`` of a path ending in a month folder, else ``None``."""
    found = _MONTH_DIR.search(path.rstrip("/"))
    return (int(found.group(1)), int(found.group(2))) if found else None


def data_file(partition: str) -> str:
    """The Parquet file name of a partition's month."""
    return f"{partition}.parquet"


def signed_bytes(obj: Mapping[str, Any]) -> bytes:
    """What a manifest's MAC and signature cover."""
    body = {k: v for k, v in obj.items() if k not in ("mac", "signature")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign(obj: dict[str, Any], keys: KeyRing) -> dict[str, Any]:
    """``obj`` with ``key_id``, ``mac`` (and ``sig_key_id``, ``signature``) filled in."""
    kid, _ = keys.require_sealing_key()
    out = dict(obj, key_id=kid, sig_key_id=keys.signing_kid)
    message = signed_bytes(out)
    mac = keys.mac(kid, message)
    assert mac is not None  # require_sealing_key guarantees the key  # noqa: S101
    out["mac"] = mac.hex()
    signed = keys.sign(message)
    out["signature"] = signed[1].hex() if signed else None
    return out


def auth_problem(obj: Mapping[str, Any], keys: KeyRing, what: str) -> tuple[str, str] | None:
    """``(kind, detail)`` when ``obj`` does not authenticate with ``keys``, else ``None``.

    Like an export's checkpoint: accepted when every key given for it verifies (its HMAC key,
    if given; an Ed25519 public key, if any is given, and then a signature is required) and at
    least one does. ``kind`` is ``modified`` or ``unknown_key``.
    """
    message = signed_bytes(obj)
    checked = False
    kid = str(obj.get("key_id"))
    if kid in keys.hmac_keys:
        expected = keys.mac(kid, message)
        try:
            given = bytes.fromhex(str(obj.get("mac", "")))
        except ValueError:
            given = b""
        if expected is None or not hmac.compare_digest(expected, given):
            return "modified", f"{what}: the HMAC does not match (altered, or another key)"
        checked = True
    if keys.public_keys:
        sig_kid, signature = obj.get("sig_key_id"), obj.get("signature")
        if not sig_kid or not signature:
            return "modified", f"{what}: not signed, but a public key was given"
        try:
            raw = bytes.fromhex(str(signature))
        except ValueError:
            raw = b""
        good = keys.check_signature(str(sig_kid), message, raw)
        if good is False:
            return "modified", f"{what}: the Ed25519 signature is invalid"
        if good is None:
            return "unknown_key", f"{what}: signed with key {sig_kid!r}, which is not given"
        checked = True
    if not checked:
        return "unknown_key", (f"{what}: authenticated with HMAC key {kid!r}, which is not "
                               "given (nor a public key)")
    return None


def positions_text(runs: Iterable[tuple[int, int]]) -> str:
    """Half-open ``(lower, upper)`` runs as canonical ``int8multirange`` text."""
    return "{" + ",".join(f"[{a},{b})" for a, b in runs) + "}"


class Runs:
    """Collects increasing positions into half-open runs."""

    def __init__(self) -> None:
        self.runs: list[list[int]] = []

    def add(self, position: int) -> None:
        if self.runs and self.runs[-1][1] == position:
            self.runs[-1][1] = position + 1
        else:
            self.runs.append([position, position + 1])

    def text(self) -> str:
        return positions_text((a, b) for a, b in self.runs)


def id_runs(ids: list[int]) -> str:
    """The set of ``ids`` as canonical multirange text: compact, since a month's ids are
    nearly contiguous (they come from one sequence, in time order)."""
    runs = Runs()
    previous = None
    for value in sorted(ids):
        if value != previous:
            runs.add(value)
        previous = value
    return runs.text()


def parse_runs(text: str) -> set[int]:
    """The integers of multirange text (``{[1,4),[9,10)}``); ``ValueError`` when malformed."""
    body = text.strip()
    if not (body.startswith("{") and body.endswith("}")):
        raise ValueError(f"not a multirange: {text!r}")
    found: set[int] = set()
    for part in filter(None, body[1:-1].split(",[")):
        lower, upper = part.strip("[)").split(",")
        found.update(range(int(lower), int(upper)))
    return found


def canonical_texts(row: Mapping[str, Any]) -> list[str | None]:
    """The 25 content texts of an archived row (typed Parquet values), in column order."""
    texts: list[str | None] = []
    for column in COLUMNS[1:]:
        value = row[column]
        if value is None:
            texts.append(None)
        elif column == "occurred_at":
            if not isinstance(value, dt.datetime) or value.tzinfo is None:
                raise TypeError("occurred_at: expected a UTC timestamp")
            texts.append(utc_text(value))
        elif column in ARRAY_COLUMNS:
            if not isinstance(value, list):
                raise TypeError(f"{column}: expected a list")
            texts.append(jsonb_text(value))
        elif column == "txid":
            texts.append(str(int(value)))
        elif column == "success":
            texts.append("true" if value else "false")
        elif isinstance(value, str):
            texts.append(value)
        else:
            raise TypeError(f"{column}: expected text, got {type(value).__name__}")
    return texts


def iso(moment: dt.datetime) -> str:
    """UTC ISO text of a manifest's times."""
    return utc_text(moment)
