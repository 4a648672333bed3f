"""Sizing figures for the partitioned trail: load rate, storage per row, admin query latency.

A trail of ``N`` events (10,000,000 by default; 20,000 in quick mode) is generated straight
into ``audit.events`` (as a superuser, ``INSERT ... SELECT generate_series`` in chunks) across
24 monthly partitions (2024-01 to 2025-12) of a fresh database on an embedded PostgreSQL
server (or ``DATABASE_URL``): 1,000 users, 12 tables, 50,000 records, realistic JSON images.

Measured:

- bulk load rate (rows/s over the whole load, partitioned indexes maintained) and the time
  of the ``VACUUM ANALYZE`` that follows;
- insert throughput through the capture trigger: 100-row ``INSERT`` statements into a
  tracked table, against the same statements into an untracked twin (the baseline),
  interleaved, median of rounds;
- storage: total bytes of every partition (heap, TOAST, indexes) per row, rows per GB, the
  index share, and the chain's bytes per sealed entry (a sample is sealed);
- admin query latency, median and p95, as the admin routes run them (the admin query layer's
  statements, ``events_page`` plus its capped ``events_count``): one user over 30 days, one
  record's history, the first page unfiltered, and a deep cursor page (keyset halfway down);
- one retention drop of a whole month (checkpoint, audit event, ``DROP``), and a partition
  ``ensure`` that finds nothing to do.

    PYTHONPATH=src python bench/scaling.py            # 10,000,000 events (several minutes)
    PYTHONPATH=src python bench/scaling.py --quick    # smoke run
    PYTHONPATH=src python bench/scaling.py --events 2000000
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import psycopg
import structlog
from psycopg import sql

from audit_mw import _sql
from audit_mw.admin.query import COUNT_CAP, CursorCodec, parse_event_query, where_clause
from audit_mw.capture.partitions import create_partition, ensure_partitions
from audit_mw.capture.schema import install
from audit_mw.capture.tracking import track
from audit_mw.integrity import KeyRing, seal
from audit_mw.retention import apply_retention, parse_policy
from bench._server import scratch_database

#: The embedded server's settings when DATABASE_URL is not set: loading, not durability.
SCALING_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                    "max_wal_size": "4GB", "maintenance_work_mem": "256MB"}
KEYS = KeyRing.build({"bench": b"b" * 32}, current_kid="bench")
START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
MONTHS = 24
CHUNK = 1_000_000
LIMIT = 50

GENERATE = """
INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name, record_id,
                          old_values, new_values, changed_fields, app_user_id, client_ip,
                          request_id, user_agent, db_role, application_name)
SELECT %(start)s::timestamptz + g * %(step)s::interval,
       'data', (ARRAY['INSERT', 'UPDATE', 'DELETE'])[1 + g %% 3], 'public',
       'table_' || (g %% 12), ((g::bigint * 7919) %% 50000)::text,
       CASE WHEN g %% 3 <> 0 THEN jsonb_build_object('id', g %% 50000, 'total', g %% 997,
                                                     'status', 'open') END,
       CASE WHEN g %% 3 <> 2 THEN jsonb_build_object('id', g %% 50000, 'total', g %% 991,
                                                     'status', 'paid') END,
       CASE WHEN g %% 3 = 1 THEN ARRAY['status', 'total'] END,
       'user' || ((g * 31) %% 1000), ('10.' || (g %% 250) || '.0.1')::inet,
       'req-' || g, 'Mozilla/5.0 (bench)', 'app', 'web'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""

CAPTURE = """
INSERT INTO {table} (id, customer, total, status, note)
SELECT g, 'customer ' || (g %% 500), g %% 997, 'open', 'order placed through the web shop'
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""


def _months() -> list[tuple[dt.datetime, dt.datetime]]:
    bounds = []
    for n in range(MONTHS):
        year, month = divmod(START.month - 1 + n, 12)
        lo = START.replace(year=START.year + year, month=month + 1)
        year2, month2 = divmod(START.month + n, 12)
        bounds.append((lo, START.replace(year=START.year + year2, month=month2 + 1)))
    return bounds


def _load(conn: psycopg.Connection[Any], events: int) -> float:
    step = (_months()[-1][1] - START) / (events + 1)
    started = time.perf_counter()
    for first in range(1, events + 1, CHUNK):
        last = min(first + CHUNK - 1, events)
        conn.execute(GENERATE, {"start": START, "step": step, "first": first, "last": last})
    return time.perf_counter() - started


def _capture(conn: psycopg.Connection[Any], rows: int, rounds: int) -> dict[str, Any]:
    for table in ("orders", "orders_untracked"):
        conn.execute(sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, customer text,"
                             " total numeric, status text, note text)").format(
                                 sql.Identifier(table)))
    track(conn, "orders")
    per_statement = 100
    timings: dict[str, list[float]] = {"orders": [], "orders_untracked": []}
    next_id = {"orders": 1, "orders_untracked": 1}
    for _ in range(rounds):
        for table in ("orders", "orders_untracked"):  # interleaved
            query = sql.SQL(CAPTURE).format(table=sql.Identifier(table))
            started = time.perf_counter()
            for _ in range(rows // per_statement):
                first = next_id[table]
                conn.execute(query, {"first": first, "last": first + per_statement - 1})
                next_id[table] += per_statement
            timings[table].append(rows / (time.perf_counter() - started))
    tracked = statistics.median(timings["orders"])
    baseline = statistics.median(timings["orders_untracked"])
    return {"name": "insert through the capture trigger (100-row statements)",
            "metric": "throughput", "value": round(tracked), "unit": "rows/s",
            "baseline": round(baseline), "ratio": round(tracked / baseline, 3),
            "rounds": rounds}


def _storage(conn: psycopg.Connection[Any], events: int) -> list[dict[str, Any]]:
    row = conn.execute("""
        SELECT sum(pg_total_relation_size(p.partition)), sum(pg_indexes_size(p.partition)),
               sum(pg_relation_size(p.partition))
        FROM audit.event_partitions() AS p""").fetchone()
    assert row is not None
    total, indexes, heap = (int(v) for v in row)
    per_row = total / events
    return [
        {"name": "storage per event (heap, TOAST, indexes)", "metric": "size",
         "value": round(per_row, 1), "unit": "bytes", "heap_bytes": round(heap / events, 1),
         "index_bytes": round(indexes / events, 1), "total_bytes": total},
        {"name": "events per GB", "metric": "density", "value": round(2**30 / per_row),
         "unit": "rows"},
    ]


def _chain_storage(conn: psycopg.Connection[Any], batches: int, batch: int) -> dict[str, Any]:
    started = time.perf_counter()
    sealed = seal(conn, KEYS, batch_size=batch, max_batches=batches).sealed
    elapsed = time.perf_counter() - started
    row = conn.execute("SELECT pg_total_relation_size('audit.chain')").fetchone()
    assert row is not None
    return {"name": "chain per sealed entry (audit.chain, indexes)", "metric": "size",
            "value": round(int(row[0]) / sealed, 1), "unit": "bytes", "sealed": sealed,
            "seal_rows_per_s": round(sealed / elapsed)}


def _timed(conn: psycopg.Connection[Any], run: Callable[[psycopg.Cursor[Any]], None]
           ) -> float:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(_sql.query("admin", "read_only"), {"timeout_ms": "0"})
        started = time.perf_counter()
        run(cur)
        return (time.perf_counter() - started) * 1000


def _events_page(filters: Mapping[str, Any], before_id: int | None
                 ) -> Callable[[psycopg.Cursor[Any]], None]:
    where, params = where_clause(filters, before_id=before_id)
    count_where, count_params = where_clause(filters)
    page = _sql.query("admin", "events_page").format(where=where)
    count = _sql.query("admin", "events_count").format(where=count_where)

    def run(cur: psycopg.Cursor[Any]) -> None:
        cur.execute(page, {**params, "limit": LIMIT + 1, "offset": 0})
        cur.fetchall()
        if before_id is None:  # a cursor page does not count again
            cur.execute(count, {**count_params, "cap": COUNT_CAP + 1})
            cur.fetchall()
    return run


def _record_of(g: int) -> tuple[str, str]:
    # The table and record id GENERATE gave event number g.
    return f"table_{g % 12}", str((g * 7919) % 50000)


def _history(table: str, record: str) -> Callable[[psycopg.Cursor[Any]], None]:
    def run(cur: psycopg.Cursor[Any]) -> None:
        cur.execute(_sql.query("admin", "record_history"), {
            "table": table, "record_id": record, "schema": None, "after_id": 0,
            "limit": LIMIT + 1})
        cur.fetchall()
    return run


def _latencies(conn: psycopg.Connection[Any], events: int, rounds: int
               ) -> list[dict[str, Any]]:
    codec = CursorCodec(b"bench-cursor-secret-0123456789ab")
    row = conn.execute("SELECT max(id) FROM audit.events").fetchone()
    assert row is not None
    top = int(row[0])
    samples: dict[str, list[float]] = {}
    names = ("user + 30-day range", "record history", "first page (no filter)",
             f"cursor page {events // 2 // LIMIT} (keyset halfway down)")
    for n in range(rounds):
        month = _months()[(n * 7) % MONTHS][0]
        user_query = parse_event_query([
            ("user_id", f"user{(n * 37) % 1000}"),
            ("from", month.isoformat()), ("to", (month + dt.timedelta(days=30)).isoformat())],
            codec)
        runs = (
            _events_page(user_query.filters, None),
            _history(*_record_of(1 + (n * 104_729) % events)),
            _events_page({}, None),
            _events_page({}, top - events // 2 + n),
        )
        for name, run in zip(names, runs, strict=True):  # interleaved
            samples.setdefault(name, []).append(_timed(conn, run))
    return [{"name": name, "metric": "latency", "value": round(statistics.median(v), 2),
             "p95": round(sorted(v)[max(0, int(len(v) * 0.95) - 1)], 2), "unit": "ms",
             "requests": len(v)} for name, v in samples.items()]


def _maintenance(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    started = time.perf_counter()
    ensure_partitions(conn, 3)
    ensure_ms = (time.perf_counter() - started) * 1000
    now = _months()[0][1] + dt.timedelta(days=365 * 2 + 40)
    started = time.perf_counter()
    result = apply_retention(conn, parse_policy("2y"), KEYS, now=now, verify_first=False)
    drop_s = time.perf_counter() - started
    return [
        {"name": "partitions ensure (nothing to do)", "metric": "latency",
         "value": round(ensure_ms, 2), "unit": "ms"},
        {"name": "retention drop (plan, checkpoint, event, DROP)", "metric": "duration",
         "value": round(drop_s, 2), "unit": "s", "partitions": len(result.dropped),
         "rows": sum(d.rows or 0 for d in result.to_drop)},
    ]


def run(quick: bool = False, events: int | None = None) -> list[dict[str, Any]]:
    """Load ``events`` rows and measure; returns one dict per figure."""
    events = events or (20_000 if quick else 10_000_000)
    rounds = 5 if quick else 40
    with scratch_database(SCALING_SETTINGS) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        with psycopg.connect(dsn) as installer:
            install(installer)
        for lo, hi in _months():
            create_partition(conn, lo, hi)
        load_s = _load(conn, events)
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE audit.events")
        vacuum_s = time.perf_counter() - started
        results: list[dict[str, Any]] = [
            {"name": f"bulk load {events} events into {MONTHS} partitions", "metric":
             "throughput", "value": round(events / load_s), "unit": "rows/s",
             "seconds": round(load_s, 1)},
            {"name": "VACUUM ANALYZE after the load", "metric": "duration",
             "value": round(vacuum_s, 1), "unit": "s"},
        ]
        results += _storage(conn, events)
        results += _latencies(conn, events, rounds)
        results.append(_capture(conn, 2_000 if quick else 20_000, 3 if quick else 5))
        first_month = conn.execute("SELECT count(*) FROM audit.events_p202401").fetchone()
        assert first_month is not None
        batch = 1_000 if quick else 50_000
        # Seal the first month (and a little more), so that retention may drop it.
        results.append(_chain_storage(conn, -(-int(first_month[0]) // batch), batch))
        results += _maintenance(conn)
    return results


def main() -> None:
    # The retention_applied events are also logged (structlog): not on the terminal.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(
        file=open(os.devnull, "w")))  # noqa: SIM115 - open for the life of the process
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    for row in run(quick=args.quick, events=args.events):
        extra = {k: v for k, v in row.items() if k not in ("name", "metric", "value", "unit")}
        detail = ", ".join(f"{k}={v}" for k, v in extra.items())
        print(f"{row['name']:58} {row['value']:>14,} {row['unit']:8} {detail}")


if __name__ == "__main__":
    main()
