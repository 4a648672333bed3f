"""The verification core: walk a chain, check every link and every checkpoint. Pure, no I/O.

:class:`Verifier` is fed the chain's entries in position order (from the database by
:func:`audit_mw.integrity.verify.verify`, or from an export by :func:`verify_entries`) and
decides, entry by entry, whether each one is what was sealed. The first problem, in chain
order, is the answer: its kind, its position and the id of the event there.

Kinds of break:

- ``modified``: an entry's content (or its stored hash) differs from what was sealed;
- ``missing``: a sealed event, or a chain position, is gone;
- ``inserted``: an event sits among sealed ones but was never sealed;
- ``reordered``: an entry is at another position than the one it was sealed at;
- ``truncated``: the chain ends before a checkpoint that was issued for it;
- ``rolled_back``: the chain disagrees with an external checkpoint (a restored backup, a fork);
- ``bad_checkpoint``: a checkpoint fails its MAC or signature, or does not fit the chain;
- ``unknown_key``: a checkpoint names a key that is not configured (never accepted).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit_mw.integrity.canonical import CONTENT_TAG, ENTRY_TAG, canonical_row, encode_fields
from audit_mw.integrity.checkpoints import Checkpoint
from audit_mw.integrity.keys import KeyRing

__all__ = [
    "GENESIS",
    "KINDS",
    "Finding",
    "Verifier",
    "VerifyResult",
    "verify_entries",
]

_sha256 = hashlib.sha256

#: The "previous hash" of position 1.
GENESIS = bytes(32)

KINDS = ("modified", "duplicate", "missing", "inserted", "reordered", "truncated",
         "rolled_back", "bad_checkpoint", "unknown_key", "key_mismatch")
#: Findings that say "could not check", not "altered": any other finding wins over them.
KEY_KINDS = frozenset({"unknown_key", "key_mismatch"})
# At one position, the more specific finding wins.
_PRIORITY = {kind: n for n, kind in enumerate(KINDS)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem: what kind, where in the chain, which event, and a sentence about it."""

    kind: str
    position: int
    event_id: int | None
    detail: str


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """The outcome of a verification.

    ``valid`` is true only when every entry and checkpoint checked out. ``anchored`` says
    whether an external checkpoint copy vouched for the chain: without one, a truncated tail
    or a restored older backup cannot be seen, and the result says so. ``retention_cut``
    describes the retention checkpoint verification started after, when old partitions were
    dropped by policy (see :mod:`audit_mw.integrity.retention`): a cut, not a break.
    """

    valid: bool
    anchored: bool
    kind: str | None
    first_bad_id: int | None
    first_bad_position: int | None
    detail: str
    checked: int
    unsealed: int
    checkpoints: int
    head_position: int
    chain_id: str | None
    anchored_position: int | None = None
    warnings: tuple[str, ...] = field(default=())
    retention_cut: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        """``valid``, ``valid_unanchored``, ``tampered`` or ``unverifiable``."""
        if self.valid:
            return "valid" if self.anchored else "valid_unanchored"
        return "unverifiable" if self.kind in KEY_KINDS else "tampered"

    @property
    def exit_code(self) -> int:
        """0 valid, 1 tampered, 2 could not verify (a checkpoint key is not configured)."""
        return {"valid": 0, "valid_unanchored": 0, "tampered": 1}.get(self.status, 2)

    def to_json(self) -> dict[str, Any]:
        """The result as a JSON-ready dict."""
        return {
            "status": self.status, "valid": self.valid, "anchored": self.anchored,
            "kind": self.kind, "first_bad_id": self.first_bad_id,
            "first_bad_position": self.first_bad_position, "detail": self.detail,
            "checked": self.checked, "unsealed": self.unsealed,
            "checkpoints": self.checkpoints, "head_position": self.head_position,
            "anchored_position": self.anchored_position, "chain_id": self.chain_id,
            "warnings": list(self.warnings), "retention_cut": self.retention_cut,
        }


class Verifier:
    """Checks checkpoints up front, then entries one by one (:meth:`feed`), then the end.

    ``checkpoints`` are the chain's own (from the database or an export), in ``seq`` order;
    ``anchors`` are copies kept outside (the checkpoint file), or ``None`` when there are
    none. ``start`` is a trusted checkpoint to begin after, instead of the genesis (for a
    trail whose oldest part was removed by retention, or an export of a range).
    ``retained`` are the half-open ranges of chain positions that retention dropped (from
    authenticated retention checkpoints, see :mod:`audit_mw.integrity.retention`) and
    ``retained_heads`` the entry hash each recorded at its last position: there a missing
    event is expected, and the walk links on with the entry hash the chain stored.
    """

    def __init__(
        self,
        *,
        chain_id: str | None,
        checkpoints: Sequence[Checkpoint],
        keys: KeyRing,
        anchors: Sequence[Checkpoint] | None = None,
        start: Checkpoint | None = None,
        retained: Sequence[tuple[int, int]] = (),
        retained_heads: Mapping[int, bytes] | None = None,
    ) -> None:
        self.chain_id = chain_id
        self._chain_bytes = uuid.UUID(chain_id).bytes if chain_id else b""
        self.findings: list[Finding] = []
        self.warnings: list[str] = []
        self.start_position = start.position if start else 0
        self.prev = start.head if start else GENESIS
        self.position = self.start_position
        self.last_order: tuple[int, int] | None = None
        self.checked = 0
        self.checkpoints = 0
        self.anchors = anchors
        self.mismatch: bytes | None = None
        self.tail_must_be_checkpointed = True
        self._retained = list(retained)
        self._retained_index = 0
        self._retained_heads = dict(retained_heads or {})
        #: Entries whose event retention dropped, linked over with their stored entry hash.
        self.bridged = 0
        # position -> checkpoint heads that the recomputed chain must reach there
        self._heads: dict[int, list[tuple[str, Checkpoint, int]]] = {}
        # positions whose event id we keep, to name the first entry of a checkpoint range
        self._ids: dict[int, int | None] = {self.start_position + 1: None}
        self.last_checkpoint_position = self.start_position
        self._accepted: list[tuple[Checkpoint, int]] = []
        self._good_anchors: dict[int, Checkpoint] = {}
        self._check_checkpoints(checkpoints, keys, start)
        self._anchor_max = 0
        self._anchor_agreed = self.start_position
        if anchors is not None:
            self._check_anchors(anchors, keys)
            self._compare_with_anchors()
        # A key that is not given or does not match stops nothing: the walk goes on, so that
        # altered content is still reported as such (it wins over "cannot verify").
        self.limit = min((f.position for f in self.findings if f.kind not in KEY_KINDS),
                         default=None)

    # -- checkpoints ----------------------------------------------------------------------

    def _check_checkpoints(
        self, checkpoints: Sequence[Checkpoint], keys: KeyRing, start: Checkpoint | None
    ) -> None:
        prev_pos = self.start_position
        expected_seq = start.seq + 1 if start else 1
        mismatch = _wrong_secret(
            [cp for cp in checkpoints if start is None or cp.seq > start.seq], keys)
        for cp in checkpoints:
            if start is not None and cp.seq <= start.seq:
                continue
            first = prev_pos + 1
            self._ids.setdefault(first, None)
            problem = cp.problem(keys)
            if problem is not None and mismatch:
                problem = ("key_mismatch",
                           f"checkpoint {cp.seq}: the HMAC key given as {cp.key_id!r} does not "
                           "match: no checkpoint authenticates with it (a wrong secret for "
                           "this key id, or every checkpoint was forged)")
            if problem is None and cp.chain_id != self.chain_id:
                problem = ("bad_checkpoint",
                           f"checkpoint {cp.seq} belongs to chain {cp.chain_id}")
            if problem is None and cp.seq != expected_seq:
                problem = ("bad_checkpoint",
                           f"checkpoint {expected_seq} is missing (next is {cp.seq})")
            if problem is None and (cp.count <= 0 or cp.position != prev_pos + cp.count):
                problem = ("bad_checkpoint",
                           f"checkpoint {cp.seq}: position {cp.position} and count {cp.count} "
                           f"do not follow position {prev_pos}")
            if problem is not None:
                self.findings.append(Finding(problem[0], first, None, problem[1]))
                return
            self._heads.setdefault(cp.position, []).append(("checkpoint", cp, first))
            self._accepted.append((cp, first))
            self.checkpoints += 1
            prev_pos = cp.position
            expected_seq += 1
        self.last_checkpoint_position = prev_pos

    def _check_anchors(self, anchors: Sequence[Checkpoint], keys: KeyRing) -> None:
        for cp in anchors:
            if cp.position <= self.start_position:
                continue
            first = max(cp.first_position, self.start_position + 1)
            problem = cp.problem(keys)
            if problem is not None:
                self.findings.append(Finding(problem[0], first, None,
                                             f"checkpoint file: {problem[1]}"))
                continue
            if cp.chain_id != self.chain_id:
                self.findings.append(Finding(
                    "rolled_back", self.start_position + 1, None,
                    f"checkpoint file is for chain {cp.chain_id}, the database holds "
                    f"{self.chain_id or 'no chain'}"))
                continue
            self._heads.setdefault(cp.position, []).append(("anchor", cp, first))
            self._good_anchors.setdefault(cp.seq, cp)
            self._anchor_max = max(self._anchor_max, cp.position)

    def _compare_with_anchors(self) -> None:
        # The database's checkpoint n and the file's checkpoint n must be the same one: a
        # restored backup that sealed again issues a different checkpoint under an old number.
        for cp, first in self._accepted:
            outside = self._good_anchors.get(cp.seq)
            if outside is not None and (outside.position, outside.head) != (cp.position, cp.head):
                self.findings.append(Finding(
                    "rolled_back", first, None,
                    f"checkpoint {cp.seq} in the database differs from checkpoint {cp.seq} in "
                    "the checkpoint file (restored backup or fork)"))
                return

    # -- entries --------------------------------------------------------------------------

    def _found(self, kind: str, position: int, event_id: int | None, detail: str) -> None:
        self.findings.append(Finding(kind, position, event_id, detail))
        self.limit = position if self.limit is None else min(self.limit, position)

    def feed(  # noqa: PLR0917  (called per entry: positional on purpose)
        self,
        position: int,
        event_id: int,
        txid: int | None,
        content: Sequence[bytes | str | None] | None,
        stored_content: bytes | None,
        stored_entry: bytes | None,
    ) -> bool:
        """Check the entry at ``position``; False once the first problem is known.

        ``content`` is the 25 canonical texts of the event (``None`` if the event is gone),
        ``txid`` the event's transaction id; ``stored_*`` what the chain recorded at sealing
        (``None`` when the source does not carry them).
        """
        return self.feed_encoded(position, event_id, txid,
                                 None if content is None else encode_fields(content),
                                 stored_content, stored_entry)

    def feed_encoded(  # noqa: PLR0911, PLR0917  (the hot loop: one exit per check)
        self,
        position: int,
        event_id: int,
        txid: int | None,
        encoded: bytes | None,
        stored_content: bytes | None,
        stored_entry: bytes | None,
    ) -> bool:
        """:meth:`feed` with the content already encoded (see ``canonical.encode_fields``)."""
        expected = self.position + 1
        if position == self.position and position > self.start_position:
            self._found("duplicate", position, event_id,
                        f"chain position {position} comes twice: event {event_id} is there "
                        "twice (a duplicate was added)")
            return False
        if position != expected:
            self._found("missing", expected, None,
                        f"chain position {expected} is missing")
            return False
        if position in self._ids:
            self._ids[position] = event_id
        if self.limit is not None and position >= self.limit:
            return False
        if encoded is None:
            if self._was_retained(position) and stored_entry is not None:
                return self._bridge(position, event_id, stored_entry)
            self._found("missing", position, event_id,
                        f"sealed event {event_id} at position {position} is missing")
            return False
        computed = _sha256(CONTENT_TAG + encoded).digest()
        if stored_content is not None and computed != stored_content:
            self._found("modified", position, event_id,
                        f"event {event_id} at position {position} differs from what was sealed")
            self.mismatch = computed
            return False
        if txid is not None:
            order = (txid, event_id)
            if self.last_order is not None and order <= self.last_order:
                self._found("reordered", position, event_id,
                            f"event {event_id} at position {position} is out of chain order")
                return False
            self.last_order = order
        h = _sha256(
            ENTRY_TAG + self._chain_bytes + position.to_bytes(8, "big", signed=True) + self.prev
            + event_id.to_bytes(8, "big", signed=True) + computed).digest()
        if stored_entry is not None and h != stored_entry:
            self._found("modified", position, event_id,
                        f"the chain link at position {position} (event {event_id}) was altered")
            return False
        self.prev = h
        self.position = position
        if position in self._heads and not self._check_heads(position, h):
            return False
        self.checked += 1
        return True

    def _was_retained(self, position: int) -> bool:
        # Positions come in increasing order: the ranges are consumed front to back.
        ranges, i = self._retained, self._retained_index
        while i < len(ranges) and ranges[i][1] <= position:
            i += 1
        self._retained_index = i
        return i < len(ranges) and ranges[i][0] <= position

    def _bridge(self, position: int, event_id: int, stored_entry: bytes) -> bool:
        expected = self._retained_heads.get(position)
        if expected is not None and expected != stored_entry:
            self._found("modified", position, event_id,
                        f"the chain link at position {position} (event {event_id}, dropped by "
                        "retention) differs from its retention checkpoint")
            return False
        self.prev = stored_entry
        self.position = position
        if position in self._heads and not self._check_heads(position, stored_entry):
            return False
        self.bridged += 1
        return True

    def _check_heads(self, position: int, head: bytes) -> bool:
        for source, cp, first in self._heads[position]:
            if head == cp.head:
                if source == "anchor":
                    self._anchor_agreed = max(self._anchor_agreed, position)
                continue
            if source == "checkpoint":
                self._found("modified", first, self._ids.get(first),
                            f"entries {first}..{position} were rewritten: their hashes no "
                            f"longer reach checkpoint {cp.seq}")
            else:
                start = self._anchor_agreed + 1
                self._found("rolled_back", start, self._ids.get(start),
                            f"the chain differs from checkpoint {cp.seq} in the checkpoint "
                            f"file after position {self._anchor_agreed} (restored backup "
                            "or fork)")
            return False
        return True

    def reclassify(self, kind: str, detail: str) -> None:
        """Replace the kind of the latest finding (the shell knows more, e.g. reordering)."""
        last = self.findings[-1]
        self.findings[-1] = Finding(kind, last.position, last.event_id, detail)

    def add(self, finding: Finding) -> None:
        """A finding from outside the walk (for example, an event that was never sealed)."""
        self._found(finding.kind, finding.position, finding.event_id, finding.detail)

    # -- the end --------------------------------------------------------------------------

    def finish(
        self, *, unsealed: int = 0, complete: bool = True, event_ids: Mapping[int, int] | None
        = None,
    ) -> VerifyResult:
        """The result, after the last entry. ``complete`` is false when the walk stopped early."""
        head = self.position
        key_problem = any(f.kind in KEY_KINDS for f in self.findings)
        if complete and self.limit is None and not key_problem:
            if self.last_checkpoint_position > head:
                self._found("truncated", head + 1, None,
                            f"the chain ends at position {head}, its checkpoints reach "
                            f"{self.last_checkpoint_position}")
            elif head > self.last_checkpoint_position and not self.tail_must_be_checkpointed:
                self.warnings.append(
                    f"{head - self.last_checkpoint_position} entries after position "
                    f"{self.last_checkpoint_position} are covered by no checkpoint")
            elif head > self.last_checkpoint_position:
                self._found("bad_checkpoint", self.last_checkpoint_position + 1,
                            self._ids.get(self.last_checkpoint_position + 1),
                            f"entries after position {self.last_checkpoint_position} are "
                            "covered by no checkpoint")
            elif self.anchors is not None and self._anchor_max > head:
                self._found("truncated", head + 1, None,
                            f"the chain ends at position {head}; the checkpoint file "
                            f"vouches for {self._anchor_max} entries")
        if self.findings:
            altered = [f for f in self.findings if f.kind not in KEY_KINDS]
            first = min(altered or self.findings,
                        key=lambda f: (f.position, _PRIORITY[f.kind]))
            event_id = first.event_id
            if event_id is None:
                event_id = self._ids.get(first.position) or (event_ids or {}).get(first.position)
            return VerifyResult(
                valid=False, anchored=False, kind=first.kind, first_bad_id=event_id,
                first_bad_position=first.position, detail=first.detail,
                checked=min(self.checked, first.position - 1 - self.start_position),
                unsealed=unsealed, checkpoints=self.checkpoints, head_position=head,
                chain_id=self.chain_id, warnings=tuple(self.warnings))
        anchored = self.anchors is not None and self._anchor_max > 0
        if self.anchors is None:
            detail = "valid, unanchored: no external checkpoint copy was given, so a " \
                     "truncated tail or a restored older backup would not show"
        elif not anchored:
            detail = "valid, unanchored: the checkpoint file holds no checkpoint of this chain"
        else:
            detail = f"valid; anchored by the checkpoint file up to position {self._anchor_max}"
        return VerifyResult(
            valid=True, anchored=anchored, kind=None, first_bad_id=None,
            first_bad_position=None, detail=detail, checked=self.checked, unsealed=unsealed,
            checkpoints=self.checkpoints, head_position=head, chain_id=self.chain_id,
            anchored_position=self._anchor_max if anchored else None,
            warnings=tuple(self.warnings))


def _wrong_secret(checkpoints: Sequence[Checkpoint], keys: KeyRing) -> bool:
    """Whether the HMAC key given for the checkpoints' key id is simply the wrong one: every
    checkpoint names a key id we hold and not one of them authenticates with it. One forged
    checkpoint among good ones is tampering; all of them failing is a key that does not
    match (reported as such, exit 2, unless the content was altered too)."""
    if not checkpoints or not keys.hmac_keys:
        return False
    return all(cp.key_id in keys.hmac_keys and cp.problem(keys) == (
        "bad_checkpoint", f"checkpoint {cp.seq}: HMAC does not match") for cp in checkpoints)


def verify_entries(
    rows: Iterable[Mapping[str, Any]],
    checkpoints: Sequence[Checkpoint],
    keys: KeyRing,
    *,
    chain_id: str,
    anchors: Sequence[Checkpoint] | None = None,
    start: Checkpoint | None = None,
) -> VerifyResult:
    """Verify exported chain entries without a database.

    Each row maps every column of ``audit.events`` (canonical text, see
    :mod:`audit_mw.integrity.canonical`) plus ``position`` and, when the export carries
    them, ``entry_hash`` and ``content_hash`` (hex or bytes). Rows come in position order,
    starting right after ``start`` (a trusted checkpoint) or at position 1. The chain is
    authenticated by ``checkpoints`` whose positions fall inside the rows.
    """
    verifier = Verifier(chain_id=chain_id, checkpoints=checkpoints, keys=keys,
                        anchors=anchors, start=start)
    # An export may end between two checkpoints: its tail is unauthenticated, not forged.
    verifier.tail_must_be_checkpointed = False
    complete = True
    for row in rows:
        event_id, content = canonical_row(row)
        txid = row["txid"]
        if not verifier.feed(int(row["position"]), event_id,
                             None if txid is None else int(txid), content,
                             _bytes(row.get("content_hash")), _bytes(row.get("entry_hash"))):
            complete = False
            break
    return verifier.finish(complete=complete)


def _bytes(value: Any) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return bytes.fromhex(str(value))
