"""Verification of a chain segment without a database: an export's slice of the chain.

An export carries the sealed events of a time range, each with its chain position and
hashes, plus what is needed to link them to an authenticated checkpoint: the entry hash
before the first exported position, and *links* (position, event id, content hash) for every
chain entry between the first exported position and the checkpoint whose event is not in
the export. :class:`SegmentVerifier` is fed the exported entries in file order, recomputes
every entry hash, and checks that the walk reaches the checkpoint's head at its position.
Pure, no I/O; entries are checked as they come, so memory does not grow with the export.

Every exported entry's content is bound to the checkpoint through the hash chain: an edited,
removed, added or moved entry either fails its own stored hashes or, when those were
recomputed too, makes the walk miss the checkpoint's head.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from audit_mw.integrity.canonical import ENTRY_TAG
from audit_mw.integrity.checkpoints import Checkpoint
from audit_mw.integrity.keys import KeyRing

__all__ = ["Link", "SegmentFinding", "SegmentVerifier", "checkpoint_problem"]


@dataclass(frozen=True, slots=True)
class Link:
    """A chain entry outside the export, by its hashes only."""

    position: int
    event_id: int
    content_hash: bytes


@dataclass(frozen=True, slots=True)
class SegmentFinding:
    """One problem: ``kind`` (as in :mod:`audit_mw.integrity.chain`), where, and a sentence."""

    kind: str
    position: int | None
    event_id: int | None
    detail: str


def checkpoint_problem(cp: Checkpoint, keys: KeyRing) -> tuple[str, str] | None:
    """``(kind, detail)`` when ``cp`` does not authenticate with ``keys``, else ``None``.

    Unlike a database verification, an auditor may hold only some keys: a checkpoint is
    accepted when every key given for it verifies (its HMAC key, if given; an Ed25519 public
    key, if any is given, and then a signature is required) and at least one does.
    """
    message = cp.message()
    checked = False
    if cp.key_id in keys.hmac_keys:
        expected = keys.mac(cp.key_id, message)
        if expected is None or not hmac.compare_digest(expected, cp.mac):
            return "bad_checkpoint", f"checkpoint {cp.seq}: HMAC does not match"
        checked = True
    if keys.public_keys:
        if cp.signature is None or cp.sig_key_id is None:
            return "bad_checkpoint", f"checkpoint {cp.seq}: not signed"
        good = keys.check_signature(cp.sig_key_id, message, cp.signature)
        if good is False:
            return "bad_checkpoint", f"checkpoint {cp.seq}: Ed25519 signature is invalid"
        if good is None:
            return "unknown_key", (f"checkpoint {cp.seq}: signed with key {cp.sig_key_id!r}, "
                                   "which is not given")
        checked = True
    if not checked:
        return "unknown_key", (f"checkpoint {cp.seq}: authenticated with HMAC key "
                               f"{cp.key_id!r}, which is not given (nor a public key)")
    return None


class SegmentVerifier:
    """Walks positions ``first_position`` .. ``checkpoint.position`` of one chain.

    Call :meth:`feed` for each exported sealed entry, in file order, then :meth:`finish`.
    ``findings`` lists what is wrong (the walk stops at the first break: later entries
    cannot be linked); ``unverifiable`` says why the checkpoint could not be checked.
    """

    def __init__(
        self,
        *,
        chain_id: str,
        first_position: int,
        previous_hash: bytes,
        links: Sequence[Link],
        checkpoint: Checkpoint,
        keys: KeyRing,
    ) -> None:
        self.checkpoint = checkpoint
        self.findings: list[SegmentFinding] = []
        self.unverifiable: list[str] = []
        self.checked = 0
        self.position = first_position - 1
        self.prev = previous_hash
        self._chain = uuid.UUID(chain_id).bytes
        self._links = links
        self._next_link = 0
        self._last_where = "the start"
        self._gap: tuple[int, int, int, str] | None = None  # expected, found, event, where
        self.broken = False
        problem = checkpoint_problem(checkpoint, keys)
        if problem is not None and problem[0] == "unknown_key":
            self.unverifiable.append(problem[1])
        elif problem is not None:
            self._fail(problem[0], checkpoint.position, checkpoint.last_event_id, problem[1])
        elif checkpoint.chain_id != chain_id:
            self._fail("bad_checkpoint", checkpoint.position, None,
                       f"checkpoint {checkpoint.seq} belongs to chain {checkpoint.chain_id}, "
                       f"the export to chain {chain_id}")
        if len(previous_hash) != 32:
            self._fail("modified", first_position, None,
                       "the manifest's previous entry hash is not 32 bytes")

    def _fail(self, kind: str, position: int | None, event_id: int | None, detail: str) -> None:
        self.findings.append(SegmentFinding(kind, position, event_id, detail))
        self.broken = True

    def _link(self, position: int, event_id: int, content: bytes) -> bytes:
        return hashlib.sha256(
            ENTRY_TAG + self._chain + position.to_bytes(8, "big", signed=True) + self.prev
            + event_id.to_bytes(8, "big", signed=True) + content).digest()

    def _walk_links(self, until: int) -> int | None:
        """Follow the links up to ``until`` (exclusive); the position a link claims that
        does not follow, if any."""
        links = self._links
        while self._next_link < len(links) and links[self._next_link].position < until:
            link = links[self._next_link]
            if link.position != self.position + 1:
                return link.position
            self.prev = self._link(link.position, link.event_id, link.content_hash)
            self.position = link.position
            self._next_link += 1
        return None

    def feed(  # noqa: PLR0917  (called per entry: positional on purpose)
        self,
        position: int,
        event_id: int,
        content_hash: bytes,
        stored_content: bytes | None,
        stored_entry: bytes | None,
        where: str,
    ) -> None:
        """Check the exported entry at ``position``; ``where`` names it (``"line 12"``)."""
        if self._gap is not None:
            expected, found, gap_event, gap_where = self._gap
            self._gap = None
            if expected <= position < found:
                self._fail("reordered", found, gap_event,
                           f"{gap_where}: event {gap_event} (position {found}) comes before "
                           f"position {position} ({where}): lines were reordered")
            else:
                self._removed(expected, gap_where)
        if self.broken:
            return
        skipped = self._walk_links(position)
        expected = self.position + 1
        links = self._links
        if skipped is None and self._next_link < len(links) and (
                links[self._next_link].position == position):
            self._fail("inserted", position, event_id,
                       f"{where}: event {event_id} claims position {position}, which the "
                       "manifest links to an event outside the range: the line was added")
            return
        if skipped is not None or position > expected:
            # A hole: a removed line, unless the next line fills it (a reordering).
            self._gap = (expected, position, event_id, where)
            self._last_where = where
            self.broken = True
            return
        if position < expected:
            kind, how = (("inserted", "repeats an earlier position: the line was added")
                         if position == self.position else
                         ("reordered", f"comes after position {self.position}: lines were "
                                       "reordered"))
            self._fail(kind, position, event_id,
                       f"{where}: event {event_id} (position {position}) {how}")
            return
        if stored_content is not None and stored_content != content_hash:
            self._fail("modified", position, event_id,
                       f"{where}: event {event_id} (position {position}) was modified: its "
                       "content differs from what was sealed")
            return
        entry = self._link(position, event_id, content_hash)
        if stored_entry is not None and stored_entry != entry:
            what = ("the manifest's previous entry hash or this line" if self.checked == 0
                    and self.position + 1 == position and self._next_link == 0
                    else "its id or chain fields")
            self._fail("modified", position, event_id,
                       f"{where}: event {event_id} (position {position}) does not match its "
                       f"chain entry: {what} were edited")
            return
        self.prev = entry
        self.position = position
        self.checked += 1
        self._last_where = where

    def _removed(self, expected: int, where: str) -> None:
        self.findings.append(SegmentFinding(
            "missing", expected, None,
            f"chain position {expected} is missing before {where}: a line was removed"))
        self.broken = True

    def finish(self) -> None:
        """Reach the checkpoint through the remaining links and compare its head."""
        if self._gap is not None:
            expected, _, _, where = self._gap
            self._gap = None
            self._removed(expected, where)
        if self.broken:
            return
        cp = self.checkpoint
        skipped = self._walk_links(cp.position + 1)
        if skipped is not None or self.position < cp.position:
            self._fail("missing", self.position + 1, None,
                       f"chain position {self.position + 1} is missing after "
                       f"{self._last_where}: a line was removed, or the manifest's links "
                       "were altered")
            return
        if self._next_link < len(self._links):
            self._fail("bad_checkpoint", cp.position, None,
                       f"the manifest links entries beyond checkpoint {cp.seq}")
            return
        if not hmac.compare_digest(self.prev, cp.head):
            self._fail("modified", None, None,
                       f"the exported entries do not reach the head of checkpoint {cp.seq} "
                       f"(position {cp.position}): an entry was altered along with its chain "
                       "fields, or the manifest's hashes were")
