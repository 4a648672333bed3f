"""The export file format, shared by the writer and the offline verifier.

- the chain columns each exported event carries after the columns of ``audit.events``;
- the CSV cell encoding (PostgreSQL's ``COPY ... CSV`` convention: an SQL NULL is an empty,
  unquoted cell and every value is quoted, so that ``""`` is an empty string; a value a
  spreadsheet would run as a formula, or that starts with ``'``, gets a leading ``'``), and
  its exact inverse;
- how an exported event becomes the canonical texts the chain hashed;
- what an export wrote (:class:`ExportStats`) and what links it to the chain
  (:class:`ExportChain`, built from the rows of the chain statements).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_mw import _sql
from audit_mw.admin.query import ExportRange
from audit_mw.errors import ConfigurationError
from audit_mw.integrity.canonical import (
    CONTENT_COLUMNS,
    canonical_text,
    content_hash,
    jsonb_text,
)
from audit_mw.integrity.chain import GENESIS
from audit_mw.integrity.seal import checkpoint_from_row

FORMAT_VERSION: Final = 3
#: Header versions the verifier reads: 2 (HMAC manifests only) and 3 (Ed25519 signatures).
READ_VERSIONS: Final = frozenset({2, 3})
#: Prefixed to the canonical manifest before signing: a signature made for another purpose
#: (a checkpoint) can never pass as an export signature, nor the reverse.
SIGNATURE_CONTEXT: Final = b"audit_mw export manifest\n"
#: After the columns of audit.events: the chain entry of a sealed event (nulls when it is
#: not sealed yet), and the jsonb columns that hold a JSON null rather than an SQL NULL.
CHAIN_COLUMNS: Final = ("chain_position", "chain_content_hash", "chain_entry_hash",
                        "json_null_columns")
JSONB_COLUMNS: Final = frozenset({"old_values", "new_values", "context_extra", "metadata"})
ARRAY_COLUMNS: Final = frozenset({"changed_fields", "context_issues"})
CSV_MANIFEST: Final = "#manifest"
MIN_KEY_BYTES: Final = 16
#: Starts a spreadsheet may run as a formula: the ASCII signs, their full-width and small
#: forms (some spreadsheets fold them), ``'`` (so the prefix can always be taken off again);
#: any leading whitespace (a space, tab, CR, LF, NBSP ... before ``=``) is covered apart.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "'", "\uff1d", "\uff0b", "\uff0d", "\uff20",
                          "\ufe66", "\ufe62", "\ufe63", "\ufe6b", "\u2212")
_CSV_CELL = re.compile(r'"((?:[^"]|"")*)"|([^,"\r\n]*)')


@dataclass(frozen=True, slots=True)
class ExportKey:
    """The HMAC key that authenticates export manifests (never stored in the database)."""

    key_id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.secret) < MIN_KEY_BYTES:
            raise ConfigurationError(
                f"the export key must be at least {MIN_KEY_BYTES} bytes long")
        if not self.key_id:
            raise ConfigurationError("the export key needs a non-empty key id")

    def mac(self, manifest: Mapping[str, Any]) -> str:
        """HMAC-SHA256 of ``manifest`` (without its ``mac`` field), hex."""
        return hmac.new(self.secret, canonical_manifest(manifest), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ExportSigningKey:
    """The Ed25519 key that signs export manifests (``AUDIT_EXPORT_KEY``).

    It is a key of its own: the web process that serves exports holds it, never the sealing
    key (``AUDIT_HMAC_KEY``). An auditor checks a signed export with the public key alone.
    Its id is :func:`~audit_mw.integrity.keys.public_key_id` of the public key.
    """

    private: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def from_text(cls, text: str, what: str = "AUDIT_EXPORT_KEY") -> ExportSigningKey:
        """The key from the base64 of its 32-byte seed."""
        try:
            raw = base64.b64decode(text.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{what} is not valid base64") from None
        if len(raw) != 32:
            raise ConfigurationError(
                f"{what}: an Ed25519 private key is 32 bytes (base64 of the seed)")
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    @property
    def public(self) -> Ed25519PublicKey:
        """The public key an auditor verifies with."""
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        """``ed25519:`` and 16 hex digits of the public key's SHA-256."""
        return export_key_id(self.public)

    def sign(self, manifest: Mapping[str, Any]) -> dict[str, str]:
        """The manifest's ``signature`` member."""
        raw = self.private.sign(SIGNATURE_CONTEXT + canonical_manifest(manifest))
        return {"algorithm": "Ed25519", "key_id": self.key_id,
                "value": base64.b64encode(raw).decode()}

    def __repr__(self) -> str:
        return f"ExportSigningKey({self.key_id})"


def export_key_id(public: Ed25519PublicKey) -> str:
    """The id of an export public key (same form as a checkpoint signing key's id)."""
    return "ed25519:" + hashlib.sha256(public.public_bytes_raw()).hexdigest()[:16]


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """An Ed25519 public key from the base64 of its 32 raw bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError("an Ed25519 public key must be base64") from None
    if len(raw) != 32:
        raise ConfigurationError("an Ed25519 public key is 32 bytes (base64 of the raw key)")
    return Ed25519PublicKey.from_public_bytes(raw)


def check_manifest_signature(
    manifest: Mapping[str, Any], publics: Mapping[str, Ed25519PublicKey]
) -> tuple[str, str] | None:
    """``None`` when the manifest's Ed25519 signature verifies with one of ``publics``
    (by key id); else ``(kind, detail)``: ``"modified"`` for a signature that does not
    verify (or is malformed), ``"key_mismatch"`` when the signing key is not among those
    given (nothing could be checked)."""
    signature = manifest.get("signature")
    if not isinstance(signature, dict) or signature.get("algorithm") != "Ed25519":
        return "modified", "the manifest signature is missing or malformed"
    kid = str(signature.get("key_id"))
    public = publics.get(kid)
    if public is None:
        given = ", ".join(sorted(publics)) or "none"
        return "key_mismatch", (f"the manifest is signed with export key {kid}, which is not "
                                f"among the export public keys given ({given})")
    try:
        raw = base64.b64decode(str(signature.get("value")), validate=True)
        public.verify(raw, SIGNATURE_CONTEXT + canonical_manifest(manifest))
    except (binascii.Error, ValueError, InvalidSignature):
        return "modified", ("the manifest signature does not verify: the manifest (and so "
                            "the digest of the lines it covers) was altered")
    return None


class MerkleRoot:
    """The RFC 6962 Merkle tree head (SHA-256) over a sequence of leaves, built as they come
    with memory for log2(n) hashes: leaf ``H(0x00 || data)``, node ``H(0x01 || left ||
    right)``, the empty tree ``H()``. The manifest carries it over the export's event lines,
    so one event can be proved to be in a signed export with log2(n) hashes."""

    def __init__(self) -> None:
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, hash), sizes decreasing
        self.count = 0

    def add(self, data: bytes) -> None:
        """Append one leaf."""
        node = (1, hashlib.sha256(b"\x00" + data).digest())
        # Merge equal complete subtrees: the stack stays a list of perfect trees.
        while self._stack and self._stack[-1][0] == node[0]:
            size, left = self._stack.pop()
            node = (size * 2, hashlib.sha256(b"\x01" + left + node[1]).digest())
        self._stack.append(node)
        self.count += 1

    def hexdigest(self) -> str:
        """The root so far, hex."""
        if not self._stack:
            return hashlib.sha256(b"").hexdigest()
        root = self._stack[-1][1]
        for _, left in reversed(self._stack[:-1]):
            root = hashlib.sha256(b"\x01" + left + root).digest()
        return root.hex()


def canonical_manifest(manifest: Mapping[str, Any]) -> bytes:
    """The bytes a manifest's MAC or signature covers: JSON without ``mac`` and
    ``signature``, sorted keys, no spaces, ASCII."""
    body = {k: v for k, v in manifest.items() if k not in ("mac", "signature")}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def neutralise_cell(value: str) -> str:
    """``value`` made inert for spreadsheets: a leading formula character (ASCII or a
    full-width look-alike) or leading whitespace gets a ``'``.

    A value that already starts with ``'`` gets one too, so that taking one leading ``'``
    off (:func:`restore_cell`) always gives the value back.
    """
    if value.startswith(_FORMULA_STARTS) or (value and value[0].isspace()):
        return "'" + value
    return value


def restore_cell(cell: str) -> str:
    """The inverse of :func:`neutralise_cell`."""
    return cell[1:] if cell.startswith("'") else cell


def csv_row(cells: Sequence[str | None]) -> str:
    """One CSV record: ``None`` as an empty unquoted cell, every value neutralised and quoted."""
    return ",".join(
        "" if c is None else '"' + neutralise_cell(c).replace('"', '""') + '"'
        for c in cells) + "\r\n"


def parse_csv_record(text: str) -> list[str | None] | None:
    """The cells of one record (without its line end), ``None`` for an empty unquoted cell;
    ``None`` when the text is not well-formed CSV. Values are returned as written (still
    neutralised)."""
    cells: list[str | None] = []
    pos, end = 0, len(text)
    while True:
        match = _CSV_CELL.match(text, pos)
        if match is None:  # the pattern matches the empty string: never None
            return None
        quoted, bare = match.group(1), match.group(2)
        cells.append(quoted.replace('""', '"') if quoted is not None else (bare or None))
        pos = match.end()
        if pos == end:
            return cells
        if text[pos] != ",":
            return None
        pos += 1


def csv_records(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    """``(first line number, record text without its line end)`` of CSV lines, joining the
    lines of a quoted value that spans several (an even number of quotes closes a record)."""
    pending: list[str] = []
    quotes = 0
    start = 0
    for number, line in enumerate(lines, start=1):
        if not pending:
            start = number
        pending.append(line)
        quotes += line.count('"')
        if quotes % 2 == 0:
            record = "".join(pending)
            yield start, record[:-2] if record.endswith("\r\n") else record.rstrip("\n")
            pending, quotes = [], 0
    if pending:
        yield start, "".join(pending)


def csv_value(column: str, value: Any) -> str | None:
    """The CSV cell text of a value parsed from ``row_to_json`` (with ``parse_json``):
    jsonb and arrays as PostgreSQL prints jsonb, booleans as ``true``/``false``."""
    if value is None:
        return None
    if column in JSONB_COLUMNS or isinstance(value, dict | list):
        return jsonb_text(value)
    if value is True or value is False:
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True, slots=True)
class ChainFields:
    """The chain entry an exported event carries (``position`` is ``None`` when unsealed)."""

    position: int | None
    content_hash: bytes | None
    entry_hash: bytes | None
    json_nulls: frozenset[str]


def chain_fields(event: Mapping[str, Any]) -> ChainFields:
    """The chain columns of an exported event; ``ValueError`` when they are malformed."""
    raw = event.get("chain_position")
    position = None if raw is None else int(raw)
    if position is not None and position < 1:
        raise ValueError("chain_position must be positive")
    nulls = event.get("json_null_columns")
    if isinstance(nulls, str):
        nulls = json.loads(nulls)
    if nulls is not None and (not isinstance(nulls, list)
                              or not set(nulls) <= JSONB_COLUMNS):
        raise ValueError("json_null_columns must list jsonb columns")
    return ChainFields(position, _hash(event.get("chain_content_hash")),
                       _hash(event.get("chain_entry_hash")), frozenset(nulls or ()))


def _hash(value: Any) -> bytes | None:
    if value is None:
        return None
    raw = bytes.fromhex(str(value))
    if len(raw) != 32:
        raise ValueError("a chain hash is 32 bytes, 64 hex digits")
    return raw


def event_content(event: Mapping[str, Any], json_nulls: frozenset[str], *, parsed: bool
                  ) -> tuple[int, bytes]:
    """``(id, content hash)`` of an exported event, recomputed from its values.

    ``parsed``: the values come from a JSON line (jsonb and arrays as JSON values), not
    from CSV cells (their text). Raises ``ValueError``/``TypeError``/``KeyError`` when a
    value cannot be read as its column's type.
    """
    texts: list[str | None] = []
    for column in CONTENT_COLUMNS:
        value = event[column]
        if value is None:
            texts.append("null" if column in json_nulls else None)
        elif parsed and (column in JSONB_COLUMNS or column in ARRAY_COLUMNS):
            if column in ARRAY_COLUMNS and not isinstance(value, list):
                raise TypeError(f"{column}: expected an array")
            texts.append(jsonb_text(value))
        else:
            texts.append(canonical_text(column, value))
    event_id = canonical_text("id", event["id"])
    if event_id is None:
        raise ValueError("the event has no id")
    return int(event_id), content_hash(texts)


@dataclass(slots=True)
class ExportStats:
    """What an export wrote, known once it is finished."""

    count: int = 0
    sealed: int = 0
    unsealed: int = 0
    sha256: str = ""
    first: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    first_position: int | None = None
    last_position: int | None = None
    complete: bool = False


@dataclass(frozen=True, slots=True)
class ExportChain:
    """What links the exported slice to the chain, read after the rows (same snapshot)."""

    chain_id: str
    previous_hash: bytes
    checkpoint: Mapping[str, Any] | None
    links: Sequence[tuple[int, int, bytes]]

    def to_json(self, stats: ExportStats) -> dict[str, Any]:
        """The manifest's ``chain`` member."""
        return {
            "chain_id": self.chain_id,
            "first_position": stats.first_position,
            "last_position": stats.last_position,
            "previous_entry_hash": self.previous_hash.hex(),
            "links": [[pos, event_id, content.hex()] for pos, event_id, content in self.links],
        }


def range_params(export: ExportRange) -> dict[str, Any]:
    """The parameters of the export statements for ``export``'s range."""
    return {"start": export.start, "end": export.end}


def checkpoint_columns() -> Any:
    """The checkpoint columns, as the covering-checkpoint statement selects them."""
    return _sql.query("integrity", "checkpoint_columns")


def chain_params(export: ExportRange, stats: ExportStats, checkpoint_position: int
                 ) -> dict[str, Any]:
    """The parameters of the links statement: the range and the chain positions."""
    return {**range_params(export), "first": stats.first_position,
            "last": checkpoint_position}


def make_chain(chain_id: Any, previous: Any, checkpoint: dict[str, Any] | None,
               links: Sequence[Any]) -> ExportChain:
    """The :class:`ExportChain` from the rows the chain statements returned."""
    cp = checkpoint_from_row(checkpoint).to_json() if checkpoint else None
    return ExportChain(
        chain_id=str(chain_id[0]) if chain_id else "",
        previous_hash=bytes(previous[0]) if previous else GENESIS,
        checkpoint=cp,
        links=[(int(r[0]), int(r[1]), bytes(r[2])) for r in links])
