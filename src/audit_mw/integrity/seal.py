"""Sealing: link committed audit events into the hash chain and issue a checkpoint.

:func:`seal` takes the events that can no longer change (transaction id below the snapshot's
xmin), in ``(txid, id)`` order, after the last sealed one; hashes them; appends them to
``audit.chain``; and records an authenticated checkpoint, all in one transaction per batch.
Writers are never blocked: the sealer only reads ``audit.events`` and writes its own tables.
One sealer runs at a time (a lease in ``audit.seal_lease`` that only roles that may seal can
take; a second one returns ``busy`` with who holds it). A crash
loses at most an uncommitted batch, which the next run seals again; checkpoints committed but
not yet copied to the checkpoint file are copied by the next run.

:class:`BackgroundSealer` runs :func:`seal` every few seconds in a thread of an application.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
import structlog
from psycopg import pq
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.errors import SchemaError, VerificationError
from audit_mw.integrity.canonical import COLUMNS, CONTENT_TAG, ENTRY_TAG
from audit_mw.integrity.chain import GENESIS
from audit_mw.integrity.checkpoints import (
    Checkpoint,
    CheckpointSink,
    JsonlSink,
    utc_text,
)
from audit_mw.integrity.keys import KeyRing

__all__ = ["BackgroundSealer", "SealResult", "checkpoint_from_row", "seal"]

_LOG = structlog.get_logger("audit_mw.integrity")
#: Below any id the identity column hands out: where the chain's order starts.
_ORDER_START = ("0", -(2**63))


@dataclass(frozen=True, slots=True)
class SealResult:
    """What a :func:`seal` run did."""

    sealed: int
    checkpoints: tuple[Checkpoint, ...]
    head_position: int
    chain_id: str | None
    busy: bool = False
    #: When busy: who holds the sealing lease ("backend 123 (role sealer) since ..."), or
    #: None when it was being taken at that moment.
    holder: str | None = None
    #: When busy: when the oldest unsealed event was written (how long the backlog waits).
    oldest_unsealed: dt.datetime | None = None


def _columns_sql() -> Any:
    return _sql.query("integrity", "canonical_columns")


def check_event_columns(conn: psycopg.Connection[Any]) -> None:
    """Refuse to hash when audit.events has other columns than the encoding covers, or the
    database does not store text as UTF-8 (the encoding counts UTF-8 bytes)."""
    encoding = conn.execute(_sql.query("integrity", "server_encoding")).fetchone()
    if not encoding or encoding[0] != "UTF8":
        raise SchemaError(f"the integrity chain needs a UTF8 database, this one is "
                          f"{encoding[0] if encoding else 'unknown'}")
    rows = conn.execute(_sql.query("integrity", "event_columns")).fetchall()
    found = tuple(str(r[0]) for r in rows)
    if found != COLUMNS:
        raise SchemaError(
            "audit.events has columns the integrity encoding does not cover "
            f"(expected {', '.join(COLUMNS)}; found {', '.join(found)}): the chain would not "
            "protect them")


def checkpoint_from_row(row: dict[str, Any]) -> Checkpoint:
    """A :class:`Checkpoint` from an ``audit.checkpoints`` row."""
    return Checkpoint(
        seq=int(row["seq"]), chain_id=str(row["chain_id"]), position=int(row["position"]),
        count=int(row["entry_count"]), head=bytes(row["head_hash"]),
        last_event_id=None if row["last_event_id"] is None else int(row["last_event_id"]),
        created_at=_created_text(row["created_at"]), key_id=str(row["key_id"]),
        mac=bytes(row["mac"]), sig_key_id=row["sig_key_id"],
        signature=None if row["signature"] is None else bytes(row["signature"]),
    )


def _created_text(value: Any) -> str:
    # Read as canonical text by the statements (no DateStyle can garble it); a datetime from
    # a caller's own query is formatted the same way.
    return value if isinstance(value, str) else utc_text(value)


def _checkpoints(cur: psycopg.Cursor[Any], name: str, **params: Any) -> list[Checkpoint]:
    cur.execute(_sql.query("integrity", name).format(
        columns=_sql.query("integrity", "checkpoint_columns")), params)
    return [checkpoint_from_row(r) for r in cur.fetchall()]


def seal(
    conn: psycopg.Connection[Any],
    keys: KeyRing | None = None,
    *,
    sinks: Sequence[CheckpointSink] = (),
    batch_size: int = 50_000,
    max_batches: int | None = None,
) -> SealResult:
    """Seal every event that can be sealed now; one checkpoint per batch of ``batch_size``.

    "Now" is the start of the run: events that become sealable while it runs are left to the
    next one, so a run ends even while writers keep committing.

    ``keys`` defaults to :meth:`KeyRing.from_env`; without an HMAC key this raises
    :class:`~audit_mw.errors.ConfigurationError` before touching anything. ``conn`` must not
    be inside a transaction: each batch is its own. ``sinks`` get every new checkpoint after
    it is committed (and, for a :class:`JsonlSink`, any committed checkpoint it lacks).
    Raises :class:`~audit_mw.errors.VerificationError`, and seals nothing, when the chain head
    does not match the last checkpoint or the checkpoint file is ahead of the database.
    """
    keys = KeyRing.from_env() if keys is None else keys
    keys.require_sealing_key()
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    if conn.info.transaction_status != pq.TransactionStatus.IDLE:
        raise VerificationError("seal needs a connection that is not inside a transaction")
    with conn.transaction():
        # The lease holder's time and the backlog's are read as UTC text: a session TimeZone
        # such as 'UTC+14' would otherwise redefine what AT TIME ZONE 'UTC' means.
        conn.execute(_sql.query("integrity", "pin_session"))
        check_event_columns(conn)
        lease = conn.execute(_sql.query("integrity", "has_seal_lease")).fetchone()
        suffix = "" if lease and lease[0] else "_before_0009"
        locked = conn.execute(_sql.query("integrity", "try_lock" + suffix)).fetchone()
    if not locked or not locked[0]:
        with conn.transaction():
            conn.execute(_sql.query("integrity", "pin_session"))
            row = conn.execute(_sql.query("integrity", "oldest_unsealed")).fetchone()
        holder = (f"backend {locked[1]} (role {locked[2]}) since {locked[3]}"
                  if locked and locked[1] is not None else None)
        return SealResult(0, (), 0, None, busy=True, holder=holder,
                          oldest_unsealed=dt.datetime.fromisoformat(row[0]) if row else None)
    try:
        return _seal_locked(conn, keys, sinks, batch_size, max_batches)
    finally:
        with conn.transaction():
            conn.execute(_sql.query("integrity", "unlock" + suffix))


def _seal_locked(
    conn: psycopg.Connection[Any],
    keys: KeyRing,
    sinks: Sequence[CheckpointSink],
    batch_size: int,
    max_batches: int | None,
) -> SealResult:
    issued: list[Checkpoint] = []
    sealed = 0
    head_position = 0
    chain_id: str | None = None
    batches = 0
    # Fixed by the first batch's snapshot: without it, a run under steady writes that
    # outpace one batch would never return (and never let a BackgroundSealer stop).
    horizon: Any = None
    while max_batches is None or batches < max_batches:
        with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_sql.query("integrity", "repeatable_read"))
            cur.execute(_sql.query("integrity", "pin_session"))
            chain_id, head, last_cp = _state(cur, keys)
            if horizon is None:
                _catch_up_sinks(cur, sinks, chain_id, last_cp)
                row = cur.execute(_sql.query("integrity", "seal_horizon")).fetchone()
                horizon = row["horizon"] if row else None
            head_position = head["position"] if head else 0
            cp = _seal_batch(conn, cur, keys=keys, chain_id=chain_id, head=head,
                             last_cp=last_cp, batch_size=batch_size, horizon=horizon)
        if cp is None:
            break
        batches += 1
        sealed += cp.count
        head_position = cp.position
        issued.append(cp)
        _write_sinks(sinks, [cp])
    return SealResult(sealed, tuple(issued), head_position, chain_id)


def _state(
    cur: psycopg.Cursor[dict[str, Any]], keys: KeyRing
) -> tuple[str, dict[str, Any] | None, Checkpoint | None]:
    cur.execute(_sql.query("integrity", "chain_id"))
    ids = cur.fetchall()
    cur.execute(_sql.query("integrity", "chain_head"))
    head = cur.fetchone()
    found = _checkpoints(cur, "last_checkpoint")
    last_cp = found[0] if found else None
    if len(ids) > 1:
        raise VerificationError("audit.chains holds more than one chain; run `audit-mw verify`")
    if not ids:
        if head is not None or last_cp is not None:
            raise VerificationError("the chain has entries but no chain id; run `audit-mw verify`")
        chain_id = str(uuid.uuid4())
        cur.execute(_sql.query("integrity", "create_chain"), {"chain_id": chain_id})
        return chain_id, None, None
    chain_id = str(ids[0]["chain_id"])
    # Extend only a head that an authenticated checkpoint vouches for: sealing on top of a
    # tampered chain would launder it.
    head_pos = head["position"] if head else 0
    cp_pos = last_cp.position if last_cp else 0
    if head_pos != cp_pos or (
        head is not None and last_cp is not None and bytes(head["entry_hash"]) != last_cp.head
    ):
        raise VerificationError(
            f"the chain head (position {head_pos}) does not match the last checkpoint "
            f"(position {cp_pos}); refusing to seal: run `audit-mw verify`")
    if last_cp is not None:
        problem = last_cp.problem(keys)
        if problem is not None:
            raise VerificationError(f"the last checkpoint does not verify ({problem[1]}); "
                                 "refusing to seal: run `audit-mw verify`")
    return chain_id, head, last_cp


def _catch_up_sinks(
    cur: psycopg.Cursor[dict[str, Any]],
    sinks: Sequence[CheckpointSink],
    chain_id: str,
    last_cp: Checkpoint | None,
) -> None:
    for sink in sinks:
        if not isinstance(sink, JsonlSink):
            continue
        in_file = sink.last()
        if in_file is None:
            missing = _checkpoints(cur, "checkpoints_after", seq=0)
        else:
            if in_file.chain_id != chain_id:
                raise VerificationError(
                    f"checkpoint file {sink.path} belongs to chain {in_file.chain_id}, the "
                    f"database holds chain {chain_id}; refusing to seal")
            db_seq = last_cp.seq if last_cp else 0
            if in_file.seq > db_seq:
                raise VerificationError(
                    f"checkpoint file {sink.path} is ahead of the database (checkpoint "
                    f"{in_file.seq}, database {db_seq}): was it restored from an older backup? "
                    "refusing to seal: run `audit-mw verify --checkpoint-file`")
            same = _checkpoints(cur, "checkpoints_after", seq=in_file.seq - 1)
            if not same or same[0].head != in_file.head or same[0].position != in_file.position:
                raise VerificationError(
                    f"checkpoint {in_file.seq} in {sink.path} differs from the database's: "
                    "the chain forked; refusing to seal: run `audit-mw verify`")
            missing = same[1:]
        if missing:
            _write_sinks([sink], missing)


def _write_sinks(sinks: Sequence[CheckpointSink], checkpoints: list[Checkpoint]) -> None:
    for sink in sinks:
        try:
            sink.write(checkpoints)
        except OSError as exc:
            raise VerificationError(
                f"checkpoint {checkpoints[-1].seq} is committed but could not be written to "
                f"its sink ({exc}); the next seal copies it") from exc


def _seal_batch(
    conn: psycopg.Connection[Any],
    cur: psycopg.Cursor[dict[str, Any]],
    *,
    keys: KeyRing,
    chain_id: str,
    head: dict[str, Any] | None,
    last_cp: Checkpoint | None,
    batch_size: int,
    horizon: Any,
) -> Checkpoint | None:
    after = (head["event_txid"], head["event_id"]) if head else _ORDER_START
    with conn.cursor() as rows_cur:
        rows_cur.execute(
            _sql.query("integrity", "sealable").format(
                columns=_columns_sql(), content=_sql.query("integrity", "content_bytes")),
            {"txid": after[0], "id": after[1], "limit": batch_size, "horizon": horizon})
        rows = rows_cur.fetchall()
    if not rows:
        return None
    chain = uuid.UUID(chain_id).bytes
    prev = bytes(head["entry_hash"]) if head else GENESIS
    position = head["position"] if head else 0
    with cur.copy(_sql.query("integrity", "copy_chain")) as copy:
        for row in rows:
            position += 1
            event_id = row[0]
            content = _sha256(CONTENT_TAG + row[2])
            prev = _sha256(ENTRY_TAG + chain + position.to_bytes(8, "big", signed=True) + prev
                           + event_id.to_bytes(8, "big", signed=True) + content)
            copy.write_row((position, event_id, row[1], content, prev))
    cp = Checkpoint(
        seq=(last_cp.seq if last_cp else 0) + 1, chain_id=chain_id, position=position,
        count=len(rows), head=prev, last_event_id=rows[-1][0],
        created_at=utc_text(dt.datetime.now(dt.UTC)), key_id="",
    ).authenticated(keys)
    cur.execute(_sql.query("integrity", "insert_checkpoint"), {
        "seq": cp.seq, "chain_id": cp.chain_id, "position": cp.position, "count": cp.count,
        "head": cp.head, "last_event_id": cp.last_event_id,
        "created_at": dt.datetime.fromisoformat(cp.created_at), "key_id": cp.key_id,
        "mac": cp.mac, "sig_key_id": cp.sig_key_id, "signature": cp.signature,
    })
    return cp


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


class BackgroundSealer:
    """Seals every ``interval`` seconds in a daemon thread of the application.

    Opens its own connection from ``conninfo`` (a role that may write the chain tables) for
    each run; a failed run is logged as a structured ``audit_seal_failed`` error and retried
    at the next interval. ``stop()`` ends the thread after the current run.
    """

    def __init__(
        self,
        conninfo: str,
        keys: KeyRing | None = None,
        *,
        interval: float = 60.0,
        sinks: Sequence[CheckpointSink] = (),
    ) -> None:
        self.conninfo = conninfo
        self.keys = KeyRing.from_env() if keys is None else keys
        self.keys.require_sealing_key()
        self.interval = interval
        self.sinks = tuple(sinks)
        self.runs = 0
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit-mw-sealer", daemon=True)

    def start(self) -> BackgroundSealer:
        self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundSealer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                with psycopg.connect(self.conninfo, application_name="audit-mw-sealer") as conn:
                    seal(conn, self.keys, sinks=self.sinks)
            except Exception as exc:
                self.failures += 1
                _LOG.error("audit_seal_failed", error=str(exc), error_type=type(exc).__name__)
            self.runs += 1
            self._stop.wait(self.interval)
