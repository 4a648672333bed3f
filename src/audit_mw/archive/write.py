"""Writing months of the trail to the archive: Parquet (zstd) with the chain columns, a
signed manifest per month and a signed index, then reading it back and verifying it.

:func:`archive_partition` archives one monthly partition, read in one short
``REPEATABLE READ`` snapshot: its events in chain order (every one must be sealed), the
chain entry before its first position, the checkpoint that covers its last position and
the *links* (the chain entries in between that belong to other months). After the
snapshot the file is uploaded, read back from the archive and verified offline
(:func:`~audit_mw.archive.verify.verify_month`) before the month enters the index; a
month that does not verify is removed again and :class:`~audit_mw.errors.ArchiveError`
raised. Archiving a month that is archived already with the same events only verifies it
again (a retention run that stopped after the archive and before the drop can simply run
again).

:func:`archive_months` archives every complete, fully sealed month not archived yet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.archive._format import (
    ARRAY_COLUMNS,
    FORMAT_VERSION,
    INDEX_NAME,
    JSONB_COLUMNS,
    MANIFEST_NAME,
    Runs,
    auth_problem,
    data_file,
    id_runs,
    iso,
    month_dir,
    sign,
)
from audit_mw.archive._store import Store, dumps, require
from audit_mw.archive.verify import verify_month
from audit_mw.capture.partitions import PartitionInfo, list_partitions
from audit_mw.errors import ArchiveError
from audit_mw.integrity.canonical import COLUMNS
from audit_mw.integrity.chain import GENESIS
from audit_mw.integrity.keys import KeyRing
from audit_mw.integrity.seal import checkpoint_from_row

__all__ = ["ArchiveRun", "MonthArchive", "archive_months", "archive_partition"]

#: Rows per Parquet row group (and per fetch from the server-side cursor).
ROW_GROUP: Final = 65536
FETCH: Final = 8192
#: Increasing integers are delta-encoded (a byte or less per value instead of several);
#: the hashes are random, so a dictionary only costs; the rest repeat, so it pays.
DELTA: Final = dict.fromkeys(("id", "occurred_at", "txid", "chain_position"),
                             "DELTA_BINARY_PACKED")
DICTIONARY: Final = [c for c in COLUMNS if c not in DELTA]


@dataclass(frozen=True, slots=True)
class MonthArchive:
    """One archived month."""

    partition: str
    year: int
    month: int
    url: str
    count: int
    positions: str
    sha256: str
    bytes: int
    reused: bool = False


@dataclass(frozen=True, slots=True)
class ArchiveRun:
    """What :func:`archive_months` archived, and which months it left, and why."""

    archived: tuple[MonthArchive, ...]
    skipped: tuple[tuple[str, str], ...] = field(default=())


def _schema() -> Any:
    pa = require("pyarrow")
    types: dict[str, Any] = {c: pa.string() for c in COLUMNS}
    types.update(id=pa.int64(), occurred_at=pa.timestamp("us", tz="UTC"), txid=pa.int64(),
                 success=pa.bool_())
    for column in ARRAY_COLUMNS:
        types[column] = pa.list_(pa.string())
    fields = [pa.field(c, types[c], nullable=c != "id") for c in COLUMNS]
    fields += [pa.field("chain_position", pa.int64(), nullable=False),
               pa.field("chain_content_hash", pa.binary(32), nullable=False),
               pa.field("chain_entry_hash", pa.binary(32), nullable=False)]
    meta = dict.fromkeys(JSONB_COLUMNS, "jsonb as PostgreSQL prints it")
    return pa.schema(fields, metadata={"audit_mw_archive": str(FORMAT_VERSION),
                                       "columns": json.dumps(meta)})


def _month_of(part: PartitionInfo) -> tuple[int, int]:
    start, end = part.range_from, part.range_to
    if start is None or end is None or part.is_default:
        raise ArchiveError(f"partition {part.name} has no month range; it cannot be archived")
    start = start.astimezone(dt.UTC)
    following = dt.datetime(start.year + (start.month == 12), start.month % 12 + 1, 1,
                            tzinfo=dt.UTC)
    if (start.day, start.hour, start.minute, start.second, start.microsecond) != (
            1, 0, 0, 0, 0) or end != following:
        raise ArchiveError(f"partition {part.name} is not one calendar month (UTC)")
    return start.year, start.month


def _partition(conn: psycopg.Connection[Any], name: str) -> PartitionInfo:
    for part in list_partitions(conn):
        if part.name == name:
            return part
    raise ArchiveError(f"no partition audit.{name}")


def _flat_array(text: str, column: str) -> list[str | None]:
    items = json.loads(text)
    if not isinstance(items, list) or not all(v is None or isinstance(v, str) for v in items):
        raise ArchiveError(f"{column} holds a value that is not a flat text array")
    return items


def _entry(row: Sequence[Any]) -> dict[str, Any]:
    return {"id": int(row[3]), "chain_position": int(row[0]), "occurred_at": row[4]}


class _Batches:
    """Canonical-text rows in, Arrow row groups out."""

    def __init__(self, schema: Any) -> None:
        self.pa = require("pyarrow")
        self.schema = schema
        self.columns: list[list[Any]] = [[] for _ in range(len(COLUMNS) + 3)]
        self.runs = Runs()
        self.ids: list[int] = []
        self.count = 0
        self.first: dict[str, Any] | None = None
        self.last: dict[str, Any] | None = None

    def add(self, rows: Sequence[Sequence[Any]], partition: str) -> None:
        """Take a batch of rows, column by column (the hot path of archiving)."""
        if not rows:
            return
        columns = list(zip(*rows, strict=True))
        positions = columns[0]
        if any(p is None for p in positions):
            raise ArchiveError(f"partition {partition} holds events that are not sealed yet; "
                               "run `audit-mw seal` first")
        for i, column in enumerate(COLUMNS):
            values: Sequence[Any] = columns[3 + i]
            if column in ARRAY_COLUMNS:
                values = [None if v is None else _flat_array(v, column) for v in values]
            elif column == "txid":
                values = [None if v is None else int(v) for v in values]
            elif column == "success":
                values = [None if v is None else v == "true" for v in values]
            self.columns[i].extend(values)
        self.columns[-3].extend(positions)
        self.columns[-2].extend(bytes(v) for v in columns[1])
        self.columns[-1].extend(bytes(v) for v in columns[2])
        for position in positions:
            self.runs.add(position)
        self.ids.extend(columns[3])
        self.count += len(rows)
        self.first = self.first or _entry(rows[0])
        self.last = _entry(rows[-1])

    def pending(self) -> int:
        return len(self.columns[0])

    def table(self) -> Any:
        pa = self.pa
        arrays = []
        for i, f in enumerate(self.schema):
            values = self.columns[i]
            if f.name == "occurred_at":
                arrays.append(pa.array(values, pa.string()).cast(f.type))
            else:
                arrays.append(pa.array(values, f.type))
        self.columns = [[] for _ in range(len(COLUMNS) + 3)]
        return pa.Table.from_arrays(arrays, schema=self.schema)


def _index(store: Store, keys: KeyRing) -> dict[str, Any] | None:
    index, _ = store.read_json(INDEX_NAME)
    if index is None:
        if store.exists(INDEX_NAME):
            raise ArchiveError(f"{store.url_of(INDEX_NAME)} is not an archive index")
        return None
    problem = auth_problem(index, keys, "the archive index")
    if problem is not None:
        raise ArchiveError(f"{problem[1]}; refusing to extend it (run audit-mw verify-archive)")
    return index


def _stats(conn: psycopg.Connection[Any], name: str) -> tuple[int, int, str]:
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("retention", "partition_stats").format(
            partition=sql.Identifier("audit", name)))
        row = cur.fetchone()
    assert row is not None  # an aggregate returns one row  # noqa: S101
    return int(row["row_count"]), int(row["unsealed"]), str(row["positions"])


def archive_partition(
    conn: psycopg.Connection[Any],
    partition: str,
    url: str,
    keys: KeyRing | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> MonthArchive:
    """Archive the monthly partition ``audit.<partition>`` to ``url`` (see the module docs).

    ``keys`` (default :meth:`KeyRing.from_env`) must hold the current HMAC key; with a signing
    key the manifests are Ed25519-signed too. ``conn`` must be in autocommit mode.
    Raises :class:`~audit_mw.errors.ArchiveError` when the month cannot be archived or its
    archive does not verify (then the month is not in the archive).
    """
    keys = KeyRing.from_env() if keys is None else keys
    keys.require_sealing_key()
    if not conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise ArchiveError("archiving needs an autocommit connection outside a transaction: "
                           "it reads each month from its own short snapshot")
    part = _partition(conn, partition)
    year, month = _month_of(part)
    store = Store.open(url, storage_options)
    conn.execute(_sql.query("archive", "lock"))
    try:
        with tempfile.TemporaryDirectory(prefix="audit_mw_archive_") as tmp:
            return _archive_month(conn, store, part, (year, month), keys=keys, tmp=tmp,
                                  storage_options=storage_options)
    finally:
        conn.execute(_sql.query("archive", "unlock"))


def _archive_month(
    conn: psycopg.Connection[Any], store: Store, part: PartitionInfo, when: tuple[int, int],
    *, keys: KeyRing, tmp: str, storage_options: Mapping[str, Any] | None,
) -> MonthArchive:
    partition, folder = part.name, month_dir(*when)
    local = os.path.join(tmp, data_file(partition))
    # Only the reading runs in the snapshot: a long transaction would hold back the sealer's
    # horizon, so the upload and the verification come after it.
    with conn.transaction():
        conn.execute(_sql.query("archive", "snapshot"))
        # The canonical texts and checkpoint times are read as verify reads them, whatever
        # TimeZone, DateStyle or search_path the session (or the role, or PGTZ) chose.
        conn.execute(_sql.query("integrity", "pin_session"))
        count, unsealed, positions = _stats(conn, partition)
        if unsealed:
            raise ArchiveError(f"partition {partition} holds {unsealed} events that are not "
                               "sealed yet; run `audit-mw seal` first")
        index = _index(store, keys)
        listed = {str(e.get("partition")): e for e in (index or {}).get("months", [])}
        if partition not in listed:
            batches = _write_parquet(conn, partition, local)
            if (batches.count, batches.runs.text()) != (count, positions):
                raise ArchiveError(f"partition {partition} changed while it was archived")
            manifest = _manifest(conn, part, when, batches=batches, local=local, keys=keys)
    if partition in listed:
        return _reuse(store, folder, listed[partition], partition,
                      current=(count, positions), keys=keys,
                      storage_options=storage_options, when=when)
    store.put_file(local, folder, data_file(partition))
    manifest_bytes = dumps(manifest)
    store.write_bytes(manifest_bytes, folder, MANIFEST_NAME)
    checked = verify_month(store.url, folder, keys, storage_options=storage_options)
    if not checked.ok:
        _remove(store, folder, partition)
        found = [str(p) for p in checked.problems[:3]] + list(checked.unverifiable[:1])
        raise ArchiveError(
            f"the archive of {partition} does not verify after it was written; it was "
            f"removed and nothing is dropped: {'; '.join(found)}")
    _extend_index(store, index, manifest, manifest_bytes, keys)
    return MonthArchive(partition, when[0], when[1], store.url_of(folder, data_file(partition)),
                        count, positions, str(manifest["sha256"]), int(manifest["bytes"]))


def _reuse(store: Store, folder: str, entry: Mapping[str, Any], partition: str, *,
           current: tuple[int, str], keys: KeyRing, storage_options: Mapping[str, Any] | None,
           when: tuple[int, int]) -> MonthArchive:
    if (entry.get("count"), entry.get("positions")) != current:
        raise ArchiveError(
            f"{partition} is archived already with other events ({entry.get('count')} at "
            f"{entry.get('positions')}; the partition holds {current[0]} at {current[1]})")
    checked = verify_month(store.url, folder, keys, storage_options=storage_options)
    if not checked.ok:
        raise ArchiveError(f"the existing archive of {partition} does not verify: "
                           f"{'; '.join(map(str, checked.problems[:3]))}")
    manifest, _ = store.read_json(folder, MANIFEST_NAME)
    assert manifest is not None  # it just verified  # noqa: S101
    return MonthArchive(partition, when[0], when[1], store.url_of(folder, data_file(partition)),
                        current[0], current[1], str(manifest["sha256"]),
                        int(manifest["bytes"]), reused=True)


def _remove(store: Store, folder: str, partition: str) -> None:
    # Best effort: the month is not in the index either way.
    for name in (MANIFEST_NAME, data_file(partition)):
        with contextlib.suppress(OSError):
            store.fs.rm(store.path(folder, name))
    with contextlib.suppress(OSError, NotImplementedError):
        store.fs.rmdir(store.path(folder))  # a local folder left empty


def _write_parquet(conn: psycopg.Connection[Any], partition: str, local: str) -> _Batches:
    pq = require("pyarrow.parquet")
    schema = _schema()
    batches = _Batches(schema)
    query = _sql.query("archive", "month_rows").format(
        columns=_sql.query("integrity", "canonical_columns"),
        partition=sql.Identifier("audit", partition))
    with pq.ParquetWriter(local, schema, compression="zstd", compression_level=3,
                          use_dictionary=DICTIONARY, column_encoding=DELTA) as writer, \
            conn.cursor(name="audit_mw_archive") as cur:
        cur.execute(query)
        while rows := cur.fetchmany(FETCH):
            batches.add(rows, partition)
            if batches.pending() >= ROW_GROUP:
                writer.write_table(batches.table(), row_group_size=ROW_GROUP)
        if batches.pending() or batches.count == 0:
            writer.write_table(batches.table(), row_group_size=ROW_GROUP)
    return batches


def _manifest(conn: psycopg.Connection[Any], part: PartitionInfo, when: tuple[int, int], *,
              batches: _Batches, local: str, keys: KeyRing) -> dict[str, Any]:
    digest = hashlib.sha256()
    with open(local, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    assert part.range_from is not None  # a month (_month_of)  # noqa: S101
    assert part.range_to is not None  # noqa: S101
    chain_row = conn.execute(_sql.query("admin", "export_chain_id")).fetchone()
    chain_id = str(chain_row[0]) if chain_row else None
    chain: dict[str, Any] | None = None
    checkpoint: dict[str, Any] | None = None
    if batches.count:
        first = batches.runs.runs[0][0]
        last = batches.runs.runs[-1][1] - 1
        previous = conn.execute(_sql.query("admin", "export_previous_hash"),
                                {"position": first - 1}).fetchone()
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_sql.query("admin", "export_covering_checkpoint").format(
                columns=_sql.query("integrity", "checkpoint_columns")), {"position": last})
            cp_row = cur.fetchone()
        if cp_row is None:
            raise ArchiveError(f"no checkpoint covers {part.name} yet (position {last}); "
                               "run `audit-mw seal` first")
        checkpoint = checkpoint_from_row(cp_row).to_json()
        links = conn.execute(_sql.query("archive", "month_links").format(
            partition=sql.Identifier("audit", part.name)),
            {"first": first, "last": checkpoint["position"]}).fetchall()
        chain = {"chain_id": chain_id, "first_position": first,
                 "previous_entry_hash": (bytes(previous[0]) if previous else GENESIS).hex(),
                 "links": [[int(p), int(i), bytes(h).hex()] for p, i, h in links]}
    manifest = {
        "audit_mw_archive": FORMAT_VERSION, "partition": part.name,
        "year": when[0], "month": when[1],
        "range_from": iso(part.range_from), "range_to": iso(part.range_to),
        "file": data_file(part.name), "sha256": digest.hexdigest(),
        "bytes": os.path.getsize(local), "compression": "zstd",
        "count": batches.count, "positions": batches.runs.text(),
        "ids": id_runs(batches.ids),
        "first": batches.first, "last": batches.last,
        "chain": chain, "checkpoint": checkpoint,
        "created_at": iso(dt.datetime.now(dt.UTC)),
        "verification": "audit-mw verify-archive URL (with AUDIT_HMAC_KEY(S) holding key_id, "
                        "or --public-key): every row's hashes are recomputed and linked to "
                        "the checkpoint's head; see docs/archive.md",
    }
    return sign(manifest, keys)


def _extend_index(store: Store, index: dict[str, Any] | None, manifest: Mapping[str, Any],
                  manifest_bytes: bytes, keys: KeyRing) -> None:
    months = [m for m in (index or {}).get("months", [])
              if m.get("partition") != manifest["partition"]]
    months.append({
        "partition": manifest["partition"], "year": manifest["year"],
        "month": manifest["month"], "count": manifest["count"],
        "positions": manifest["positions"],
        "manifest_sha256": hashlib.sha256(manifest_bytes).hexdigest(),
    })
    months.sort(key=lambda m: (m["year"], m["month"]))
    chain = manifest.get("chain") or {}
    new = {
        "audit_mw_archive_index": FORMAT_VERSION,
        "chain_id": (index or {}).get("chain_id") or chain.get("chain_id"),
        "seq": int((index or {}).get("seq", 0)) + 1,
        "updated_at": iso(dt.datetime.now(dt.UTC)),
        "months": months,
    }
    store.write_bytes(dumps(sign(new, keys)), INDEX_NAME)


def archive_months(
    conn: psycopg.Connection[Any],
    url: str,
    keys: KeyRing | None = None,
    *,
    partitions: Sequence[str] | None = None,
    now: dt.datetime | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> ArchiveRun:
    """Archive ``partitions`` (default: every month that ended before ``now``, is fully
    sealed and not archived yet), oldest first. Months that cannot be archived yet (not
    over, not sealed) are skipped with the reason; any other failure raises."""
    keys = KeyRing.from_env() if keys is None else keys
    moment = now or dt.datetime.now(dt.UTC)
    store = Store.open(url, storage_options)
    index = _index(store, keys)
    done = {str(m.get("partition")) for m in (index or {}).get("months", [])}
    archived: list[MonthArchive] = []
    skipped: list[tuple[str, str]] = []
    chosen = set(partitions) if partitions is not None else None
    for part in list_partitions(conn):
        if chosen is not None and part.name not in chosen:
            continue
        if part.is_default or part.range_to is None:
            skipped.append((part.name, "the default partition is not a month"))
            continue
        if chosen is None and part.name in done:
            continue
        if part.range_to > moment:
            skipped.append((part.name, "the month is not over"))
            continue
        count, unsealed, _ = _stats(conn, part.name)
        if unsealed:
            skipped.append((part.name, f"{unsealed} of {count} events are not sealed yet"))
            continue
        archived.append(archive_partition(conn, part.name, url, keys,
                                          storage_options=storage_options))
    if chosen is not None:
        missing = chosen - {a.partition for a in archived} - {s[0] for s in skipped}
        if missing:
            raise ArchiveError(f"no such partition: {', '.join(sorted(missing))}")
    return ArchiveRun(tuple(archived), tuple(skipped))
