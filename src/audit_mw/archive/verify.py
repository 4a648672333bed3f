"""Offline verification of an archive: no database, only the archive and the keys.

:func:`verify_archive` checks:

1. the index (``_archive.json``): its MAC with the HMAC key, or its Ed25519 signature with
   a public key; every month it lists is present with the manifest it names (a month that
   is gone is ``missing_month``), and no month folder is present that it does not list;
2. each month's manifest: authenticated the same way, the Parquet file's SHA-256 and size;
3. each month's events against the chain: every row's content hash and entry hash are
   recomputed from its values and linked, with the manifest's previous entry hash and links
   (the chain entries of other months), up to the covering checkpoint, whose head must be
   reached and whose HMAC or signature must verify. An edited, removed, added or moved row
   is named by its row number, event id and chain position, even when the file's digest and
   the row's chain columns were recomputed; the month's row count, chain positions and time
   range must be those the manifest states;
4. optionally, against the retention file (``FILE.retention``): every partition retention
   dropped must be in the archive with the row count and chain positions its retention
   checkpoint recorded, so that a month removed together with its index entry (an older
   index put back) still shows.

Statuses: ``valid``, ``tampered`` (exit 1), ``unverifiable`` (exit 2: no key given that can
check what was signed).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from audit_mw.archive._format import (
    ALL_COLUMNS,
    FORMAT_VERSION,
    INDEX_NAME,
    MANIFEST_NAME,
    Runs,
    auth_problem,
    canonical_texts,
    data_file,
    id_runs,
    month_dir,
    parse_runs,
)
from audit_mw.archive._store import Store, require
from audit_mw.integrity.canonical import content_hash
from audit_mw.integrity.checkpoints import Checkpoint
from audit_mw.integrity.keys import KeyRing
from audit_mw.integrity.retention import RetentionCheckpoint
from audit_mw.integrity.segment import Link, SegmentVerifier

__all__ = ["ArchiveProblem", "ArchiveVerifyResult", "verify_archive", "verify_month"]

#: Rows read from a Parquet file at a time while verifying.
VERIFY_BATCH = 8192


@dataclass(frozen=True, slots=True)
class ArchiveProblem:
    """One problem: its kind, the month (partition), and where (event id, chain position)."""

    kind: str
    partition: str | None
    detail: str
    event_id: int | None = None
    position: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "partition": self.partition, "event_id": self.event_id,
                "position": self.position, "detail": self.detail}

    def __str__(self) -> str:
        where = f"{self.partition}: " if self.partition else ""
        return f"{self.kind}: {where}{self.detail}"


@dataclass(frozen=True, slots=True)
class ArchiveVerifyResult:
    """The outcome of :func:`verify_archive` (or of one month, :func:`verify_month`)."""

    status: str
    problems: tuple[ArchiveProblem, ...]
    months: int
    events: int
    unverifiable: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == "valid"

    @property
    def exit_code(self) -> int:
        """0 valid, 1 tampered, 2 could not verify."""
        return {"valid": 0, "tampered": 1}.get(self.status, 2)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "ok": self.ok, "months": self.months,
                "events": self.events, "problems": [p.to_json() for p in self.problems],
                "unverifiable": list(self.unverifiable)}


class _Collector:
    def __init__(self) -> None:
        self.problems: list[ArchiveProblem] = []
        self.unverifiable: list[str] = []
        self.months = 0
        self.events = 0

    def auth(self, obj: Mapping[str, Any], keys: KeyRing, what: str,
             partition: str | None) -> bool:
        found = auth_problem(obj, keys, what)
        if found is None:
            return True
        if found[0] == "unknown_key":
            self.unverifiable.append(found[1])
        else:
            self.problems.append(ArchiveProblem("modified", partition, found[1]))
        return False

    def result(self) -> ArchiveVerifyResult:
        status = ("tampered" if self.problems else
                  "unverifiable" if self.unverifiable else "valid")
        return ArchiveVerifyResult(status, tuple(self.problems), self.months, self.events,
                                   tuple(self.unverifiable))


def verify_archive(
    url: str,
    keys: KeyRing,
    *,
    storage_options: Mapping[str, Any] | None = None,
    retention: Sequence[RetentionCheckpoint] = (),
) -> ArchiveVerifyResult:
    """Check the archive at ``url`` offline (see the module docstring).

    ``keys``: the HMAC key(s) the archive was written with, and/or Ed25519 public keys.
    ``retention``: retention checkpoints (from ``read_retention_file``) whose partitions the
    archive must hold.
    """
    store = Store.open(url, storage_options)
    out = _Collector()
    index, _ = store.read_json(INDEX_NAME)
    if index is None and not store.month_dirs():
        # Nothing at all there: most likely a wrong URL, so "cannot verify" (exit 2) rather
        # than "tampered"; an archive whose index alone is gone is tampered (below).
        out.unverifiable.append(f"there is no archive at {url} (no {INDEX_NAME}, no months)")
        return out.result()
    if index is None or index.get("audit_mw_archive_index") != FORMAT_VERSION:
        out.problems.append(ArchiveProblem(
            "missing_month" if not store.month_dirs() and index is None else "modified", None,
            f"{INDEX_NAME} is missing or not an archive index: the archive cannot be "
            "checked for missing months"))
        return out.result()
    out.auth(index, keys, f"the archive index ({INDEX_NAME})", None)
    months = index.get("months")
    if not isinstance(months, list):
        out.problems.append(ArchiveProblem("modified", None, "the index lists no months"))
        return out.result()
    listed = {}
    for entry in months:
        try:
            folder = month_dir(int(entry["year"]), int(entry["month"]))
            partition = str(entry["partition"])
        except (KeyError, TypeError, ValueError):
            out.problems.append(ArchiveProblem("modified", None, "the index is malformed"))
            return out.result()
        listed[folder] = entry
        manifest, digest = store.read_json(folder, MANIFEST_NAME)
        if manifest is None:
            out.problems.append(ArchiveProblem(
                "missing_month", partition,
                f"month {folder} is listed in the index but its manifest is gone"))
            continue
        if digest != entry.get("manifest_sha256"):
            out.problems.append(ArchiveProblem(
                "modified", partition, f"the manifest of {folder} is not the one the index "
                                       "names (replaced)"))
        _month(store, folder, manifest, keys, out, expect_chain=index.get("chain_id"))
    for folder in store.month_dirs():
        if folder not in listed:
            out.problems.append(ArchiveProblem(
                "inserted", None, f"month {folder} is in the archive but not in its index: "
                                  "it was added"))
    _check_retention(listed, retention, keys, out)
    return out.result()


def verify_month(
    url: str, folder: str, keys: KeyRing, *, storage_options: Mapping[str, Any] | None = None,
) -> ArchiveVerifyResult:
    """Check one month of the archive at ``url`` (``year=YYYY/month=MM``)."""
    store = Store.open(url, storage_options)
    out = _Collector()
    manifest, _ = store.read_json(folder, MANIFEST_NAME)
    if manifest is None:
        out.problems.append(ArchiveProblem("missing_month", None,
                                           f"month {folder} has no manifest"))
    else:
        _month(store, folder, manifest, keys, out, expect_chain=None)
    return out.result()


def _month(store: Store, folder: str, manifest: Mapping[str, Any], keys: KeyRing,
           out: _Collector, *, expect_chain: Any) -> None:
    partition = str(manifest.get("partition"))
    out.months += 1
    if manifest.get("audit_mw_archive") != FORMAT_VERSION:
        out.problems.append(ArchiveProblem("modified", partition,
                                           f"{folder}: not an archive manifest"))
        return
    out.auth(manifest, keys, f"the manifest of {folder}", partition)
    chain = manifest.get("chain")
    if expect_chain is not None and isinstance(chain, dict) and (
            chain.get("chain_id") != expect_chain):
        out.problems.append(ArchiveProblem("modified", partition,
                                           "the month belongs to another chain"))
    with tempfile.TemporaryDirectory(prefix="audit_mw_verify_") as tmp:
        local = os.path.join(tmp, "month.parquet")
        if not store.get_file(local, folder, data_file(partition)):
            out.problems.append(ArchiveProblem(
                "missing_month", partition,
                f"{folder}/{data_file(partition)} is gone (the manifest remains)"))
            return
        digest = hashlib.sha256()
        size = 0
        with open(local, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
                size += len(block)
        if digest.hexdigest() != manifest.get("sha256") or size != manifest.get("bytes"):
            out.problems.append(ArchiveProblem(
                "modified", partition, f"{data_file(partition)}: its SHA-256 or size differs "
                                       "from the manifest: the file was rewritten"))
        _rows(local, partition, manifest, keys, out)


def _segment(manifest: Mapping[str, Any], keys: KeyRing, partition: str, out: _Collector
             ) -> SegmentVerifier | None:
    chain, cp = manifest.get("chain"), manifest.get("checkpoint")
    if not manifest.get("count"):
        return None
    if not isinstance(chain, dict) or not isinstance(cp, dict):
        out.problems.append(ArchiveProblem("modified", partition, "the manifest has no chain "
                                                                  "section or checkpoint"))
        return None
    try:
        return SegmentVerifier(
            chain_id=str(chain["chain_id"]), first_position=int(chain["first_position"]),
            previous_hash=bytes.fromhex(chain["previous_entry_hash"]),
            links=[Link(int(p), int(i), bytes.fromhex(h)) for p, i, h in chain["links"]],
            checkpoint=Checkpoint.from_json(cp), keys=keys)
    except (KeyError, TypeError, ValueError) as exc:
        out.problems.append(ArchiveProblem("modified", partition,
                                           f"the manifest's chain section is malformed ({exc})"))
        return None


def _rows(local: str, partition: str, manifest: Mapping[str, Any], keys: KeyRing,
          out: _Collector) -> None:
    pq = require("pyarrow.parquet")
    try:
        parquet = pq.ParquetFile(local)
    except Exception as exc:
        out.problems.append(ArchiveProblem("modified", partition,
                                           f"the Parquet file cannot be read ({exc})"))
        return
    missing = [c for c in ALL_COLUMNS if c not in parquet.schema_arrow.names]
    if missing:
        out.problems.append(ArchiveProblem("modified", partition,
                                           f"the Parquet file lacks columns {missing}"))
        return
    segment = _segment(manifest, keys, partition, out)
    start, end = _range(manifest)
    runs = Runs()
    ids: list[int] = []
    count = 0
    for batch in parquet.iter_batches(batch_size=VERIFY_BATCH, columns=list(ALL_COLUMNS)):
        for row in batch.to_pylist():
            count += 1
            where = f"row {count}"
            if row.get("id") is not None:
                ids.append(int(row["id"]))
            problem = _row(row, where, (start, end), segment=segment, runs=runs)
            if problem is not None:
                out.problems.append(ArchiveProblem(problem[0], partition, problem[1],
                                                   problem[2], problem[3]))
    out.events += count
    if segment is not None:
        segment.finish()
        if segment.unverifiable:
            out.unverifiable.extend(f"{partition}: {u}" for u in segment.unverifiable)
        for f in segment.findings:
            out.problems.append(ArchiveProblem(f.kind, partition, f.detail, f.event_id,
                                               f.position))
    _check_ids(manifest, ids, partition, out)
    for name, seen in (("count", count), ("positions", runs.text())):
        if manifest.get(name) != seen:
            out.problems.append(ArchiveProblem(
                "modified", partition,
                f"the manifest says {name} {manifest.get(name)}, the file holds {seen}"))


def _check_ids(manifest: Mapping[str, Any], ids: list[int], partition: str,
               out: _Collector) -> None:
    """Name the events the manifest lists that the file lacks (removed rows), and those
    it holds that the manifest does not list (added rows)."""
    if id_runs(ids) == manifest.get("ids"):
        return
    try:
        listed = parse_runs(str(manifest.get("ids")))
    except ValueError:
        out.problems.append(ArchiveProblem("modified", partition,
                                           "the manifest's event ids are malformed"))
        return
    present = set(ids)
    for event_id in sorted(listed - present)[:20]:
        out.problems.append(ArchiveProblem(
            "missing", partition, f"event {event_id} is listed in the manifest but not in "
                                  "the file: its row was removed", event_id))
    for event_id in sorted(present - listed)[:20]:
        out.problems.append(ArchiveProblem(
            "inserted", partition, f"event {event_id} is in the file but not in the "
                                   "manifest: its row was added", event_id))


def _range(manifest: Mapping[str, Any]) -> tuple[Any, Any]:
    import datetime as dt  # noqa: PLC0415

    try:
        return (dt.datetime.fromisoformat(str(manifest["range_from"])),
                dt.datetime.fromisoformat(str(manifest["range_to"])))
    except (KeyError, ValueError):
        return None, None


def _row(row: Mapping[str, Any], where: str, span: tuple[Any, Any], *,
         segment: SegmentVerifier | None, runs: Runs
         ) -> tuple[str, str, int | None, int | None] | None:
    start, end = span
    event_id, position = row.get("id"), row.get("chain_position")
    if event_id is None or position is None:
        return ("inserted", f"{where}: event {event_id} has no chain position: it was "
                            "never sealed, it was added", event_id, None)
    try:
        content = content_hash(canonical_texts(row))
        stored_content = row["chain_content_hash"]
        stored_entry = row["chain_entry_hash"]
    except (TypeError, ValueError) as exc:
        return ("modified", f"{where}: event {event_id} cannot be read ({exc})",
                event_id, position)
    occurred = row["occurred_at"]
    if start is not None and occurred is not None and not start <= occurred < end:
        return ("modified", f"{where}: event {event_id} lies outside the month",
                event_id, position)
    if runs.runs and position <= runs.runs[-1][1] - 1:
        # Out of order: the segment walk says how (reordered or repeated).
        runs.runs.append([position, position + 1])
    else:
        runs.add(position)
    if segment is not None:
        segment.feed(int(position), int(event_id), content,
                     None if stored_content is None else bytes(stored_content),
                     None if stored_entry is None else bytes(stored_entry), where)
    return None


def _check_retention(listed: Mapping[str, Mapping[str, Any]],
                     retention: Sequence[RetentionCheckpoint], keys: KeyRing,
                     out: _Collector) -> None:
    by_partition = {str(e.get("partition")): e for e in listed.values()}
    for cp in retention:
        problem = cp.problem(keys)
        if problem is not None:
            out.unverifiable.append(f"retention file: {problem}")
            continue
        entry = by_partition.get(cp.partition)
        if entry is None:
            out.problems.append(ArchiveProblem(
                "missing_month", cp.partition,
                f"retention dropped {cp.partition} ({cp.row_count} events, retention "
                f"checkpoint {cp.seq}) but the archive does not hold it"))
        elif (entry.get("count"), entry.get("positions")) != (cp.row_count, cp.positions):
            out.problems.append(ArchiveProblem(
                "modified", cp.partition,
                f"the archive holds {entry.get('count')} events at positions "
                f"{entry.get('positions')}; retention checkpoint {cp.seq} dropped "
                f"{cp.row_count} at {cp.positions}"))
