"""No false alarms: many writers, rollbacks, and sealers running all the while."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_mw.capture.tracking import track
from audit_mw.integrity import BackgroundSealer, JsonlSink, seal, verify
from tests._integrity import app_event, hmac_keys

pytestmark = pytest.mark.db

KEYS = hmac_keys()
WRITERS = 16
WRITES = 500


def _writer(dsn: str, number: int, committed: list[int], errors: list[BaseException]) -> None:
    rng = random.Random(number)  # noqa: S311  (test data, not cryptography)
    done = 0
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            n = number * 1_000_000
            while done < WRITES:
                size = rng.randint(1, 5)
                rollback = rng.random() < 0.10
                _transaction(conn, n, size, rollback=rollback)
                n += size
                if not rollback:
                    committed[number] += size
                done += size
    except BaseException as exc:
        errors.append(exc)


def _transaction(conn: psycopg.Connection[Any], n: int, size: int, *, rollback: bool) -> None:
    with conn.transaction():
        for i in range(n + 1, n + size + 1):
            if i % 4 == 0:
                app_event(conn, i)
            else:
                conn.execute("INSERT INTO items VALUES (%s, %s)", [i, f"w{i}"])
        if rollback:
            raise psycopg.Rollback  # leaves the block, rolled back, quietly


@pytest.mark.slow
def test_concurrent_writers_and_sealers_never_fork(
    conn: psycopg.Connection[Any], dsn: str, tmp_path: Path
) -> None:
    conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, name text)")
    track(conn, "items")
    sink = JsonlSink(tmp_path / "cp.jsonl")
    committed = [0] * WRITERS
    errors: list[BaseException] = []
    threads = [threading.Thread(target=_writer, args=(dsn, i, committed, errors))
               for i in range(WRITERS)]
    # A background sealer plus a second, competing one: the lock keeps them apart.
    stop = threading.Event()
    busy = [0]

    def competing() -> None:
        with psycopg.connect(dsn) as own:
            while not stop.is_set():
                if seal(own, KEYS, sinks=[sink], batch_size=300).busy:
                    busy[0] += 1

    with BackgroundSealer(dsn, KEYS, interval=0.01, sinks=[sink]) as background:
        rival = threading.Thread(target=competing)
        rival.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        stop.set()
        rival.join(60)
    assert errors == []
    assert background.failures == 0
    assert background.runs > 1

    final = seal(conn, KEYS, sinks=[sink])
    assert not final.busy
    events = conn.execute("SELECT count(*) FROM audit.events").fetchone()
    assert events == (sum(committed),)
    chain = conn.execute("SELECT count(*), count(DISTINCT event_id), max(position)"
                         " FROM audit.chain").fetchone()
    assert chain == (sum(committed), sum(committed), sum(committed))
    result = verify(conn, KEYS, checkpoint_file=sink.path)
    assert result.status == "valid", result
    assert result.checked == sum(committed)
    assert result.unsealed == 0
    assert result.checkpoints > 2


class _WriterSink:
    """A checkpoint sink that commits one more event each time a checkpoint is written:
    writers that always keep one batch ahead of the sealer."""

    def __init__(self, dsn: str, first: int) -> None:
        self.dsn = dsn
        self.next = first
        self.writes = 0

    def write(self, checkpoints: Any) -> None:
        self.writes += 1
        if self.writes > 50:
            raise RuntimeError("seal kept chasing the writers")
        with psycopg.connect(self.dsn, autocommit=True) as other:
            app_event(other, self.next)
        self.next += 1


def test_a_seal_run_ends_while_writers_keep_up(
    conn: psycopg.Connection[Any], dsn: str
) -> None:
    for n in range(1, 4):
        app_event(conn, n)
    writer = _WriterSink(dsn, first=100)

    first = seal(conn, KEYS, sinks=[writer], batch_size=1)
    # The three events there when the run began, one checkpoint each; the three committed
    # during the run wait for the next one.
    assert (first.sealed, len(first.checkpoints), first.head_position) == (3, 3, 3)
    assert conn.execute("SELECT count(*) FROM audit.events").fetchone() == (6,)

    second = seal(conn, KEYS, batch_size=1)
    assert (second.sealed, second.head_position) == (3, 6)
    result = verify(conn, KEYS)  # no checkpoint file here, so "unanchored"
    assert (result.status, result.checked, result.unsealed) == ("valid_unanchored", 6, 0)
