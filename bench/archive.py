"""Archive figures: bytes per event in Parquet against PostgreSQL, archive and verification
throughput, and DuckDB's time for one record's history over 10M archived events.

A trail of ``N`` events (1,000,000 by default; 20,000 in quick mode) is generated straight
into 12 monthly partitions (2024) of a fresh database (the rows of ``bench/scaling.py``:
1,000 users, 12 tables, 50,000 records, JSON images), sealed (a checkpoint every 5,000
entries, as a sealer running every few seconds would leave them), then measured in the same
run:

- PostgreSQL: bytes per event of the partitions (heap, TOAST, indexes) and of the chain, and
  one record's history through the admin query layer's statement (median);
- the archive (a local folder): throughput of ``archive_months`` (read, write Parquet, read
  back and verify every month; wall clock, and per CPU second of the archiving process, which
  says more on a loaded machine), bytes per event of the Parquet files and of the manifests,
  and the throughput of a full offline ``verify_archive``;
- DuckDB, one record's history (``WHERE table_name = ? AND record_id = ?``, ordered by chain
  position) over the archive, median of rounds; then over 10x that many events: the real
  archive plus nine synthetic copies written by DuckDB (ids, positions and record ids
  shifted, so every query returns what it returns over the real archive). The copies are not
  chain-valid; only the query time is measured on them.

    PYTHONPATH=src python bench/archive.py             # 1,000,000 events, 10M for DuckDB
    PYTHONPATH=src python bench/archive.py --quick     # smoke run
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import structlog

from audit_mw import _sql
from audit_mw.archive import archive_months, verify_archive
from audit_mw.capture.partitions import create_partition
from audit_mw.capture.schema import install
from audit_mw.integrity import seal
from bench._server import scratch_database
from bench.scaling import GENERATE, KEYS, SCALING_SETTINGS

START = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
MONTHS = 12
CHUNK = 250_000
COPIES = 9
HISTORY = ("SELECT id, occurred_at, action, old_values, new_values, app_user_id"
           " FROM read_parquet({files}, hive_partitioning = true)"
           " WHERE table_name = ? AND record_id = ? ORDER BY chain_position")


def _month(n: int) -> dt.datetime:
    year, month = divmod(n, 12)
    return START.replace(year=START.year + year, month=month + 1)


def _load(conn: psycopg.Connection[Any], events: int) -> None:
    for n in range(MONTHS):
        create_partition(conn, _month(n), _month(n + 1))
    step = (_month(MONTHS) - START) / (events + 1)
    for first in range(1, events + 1, CHUNK):
        last = min(first + CHUNK - 1, events)
        conn.execute(GENERATE, {"start": START, "step": step, "first": first, "last": last})
    conn.execute("VACUUM ANALYZE audit.events")


def _pg_bytes(conn: psycopg.Connection[Any]) -> tuple[int, int]:
    row = conn.execute("SELECT sum(pg_total_relation_size(p.partition))"
                       " FROM audit.event_partitions() AS p").fetchone()
    chain = conn.execute("SELECT pg_total_relation_size('audit.chain')").fetchone()
    assert row is not None
    assert chain is not None
    return int(row[0]), int(chain[0])


def _records(rounds: int) -> list[tuple[str, str]]:
    # Records GENERATE wrote (event g has table_{g % 12}, record (g * 7919) % 50000).
    return [(f"table_{g % 12}", str((g * 7919) % 50000)) for g in range(101, 101 + rounds)]


def _pg_history(conn: psycopg.Connection[Any], rounds: int) -> tuple[float, int]:
    times, rows = [], 0
    for table, record in _records(rounds):
        with conn.transaction(), conn.cursor() as cur:
            cur.execute(_sql.query("admin", "read_only"), {"timeout_ms": "0"})
            started = time.perf_counter()
            cur.execute(_sql.query("admin", "record_history"), {
                "table": table, "record_id": record, "schema": None, "after_id": 0,
                "limit": 10_000})
            rows += len(cur.fetchall())
            times.append(time.perf_counter() - started)
    return statistics.median(times), rows


def _duck_history(files: list[str], rounds: int) -> tuple[float, int]:
    con = duckdb.connect()
    query = HISTORY.format(files="[" + ", ".join(f"'{f}'" for f in files) + "]")
    times, rows = [], 0
    for table, record in _records(rounds):
        started = time.perf_counter()
        rows += len(con.execute(query, [table, record]).fetchall())
        times.append(time.perf_counter() - started)
    con.close()
    return statistics.median(times), rows


def _replicate(real: Path, synthetic: Path, events: int) -> int:
    """Nine shifted copies of the archive, written by DuckDB in the same layout."""
    con = duckdb.connect()
    source = f"{real}/year=*/month=*/*.parquet"
    for k in range(1, COPIES + 1):
        shift = k * 10 * events
        con.execute(
            f"COPY (SELECT * EXCLUDE (year, month) REPLACE (id + {shift} AS id,"  # noqa: S608
            f" chain_position + {shift} AS chain_position, record_id || '-{k}' AS record_id),"
            f" year + {10 * k} AS year, month"
            f" FROM read_parquet('{source}', hive_partitioning = true))"
            f" TO '{synthetic}' (FORMAT parquet, COMPRESSION zstd,"
            " PARTITION_BY (year, month), OVERWRITE_OR_IGNORE)")
    row = con.execute("SELECT count(*) FROM read_parquet(?)",
                      [f"{synthetic}/*/*/*.parquet"]).fetchone()
    con.close()
    assert row is not None
    return int(row[0])


def _sizes(folder: Path) -> tuple[int, int]:
    parquet = sum(p.stat().st_size for p in folder.rglob("*.parquet"))
    manifests = sum(p.stat().st_size for p in folder.rglob("_*.json"))
    return parquet, manifests


def run(quick: bool = False, events: int | None = None) -> list[dict[str, Any]]:
    """Load, seal, archive and query ``events`` events; one dict per figure."""
    events = events or (20_000 if quick else 1_000_000)
    rounds = 5 if quick else 15
    results: list[dict[str, Any]] = []
    with scratch_database(SCALING_SETTINGS) as dsn, psycopg.connect(
            dsn, autocommit=True) as conn, tempfile.TemporaryDirectory(
            prefix="audit_mw_bench_archive_") as tmp:
        with psycopg.connect(dsn) as installer:
            install(installer)
        _load(conn, events)
        seal(conn, KEYS, batch_size=5_000)
        pg_total, chain_total = _pg_bytes(conn)
        pg_median, pg_rows = _pg_history(conn, rounds)

        folder = Path(tmp) / "archive"
        started, cpu = time.perf_counter(), time.process_time()
        run_ = archive_months(conn, str(folder), KEYS, now=_month(MONTHS + 1))
        archive_s = time.perf_counter() - started
        archive_cpu = time.process_time() - cpu
        archived = sum(m.count for m in run_.archived)
        assert archived == events, (archived, events)
        parquet, manifests = _sizes(folder)
        started, cpu = time.perf_counter(), time.process_time()
        checked = verify_archive(str(folder), KEYS)
        verify_s = time.perf_counter() - started
        verify_cpu = time.process_time() - cpu
        assert checked.ok, checked.problems[:3]

        pg_per = pg_total / events
        pq_per = parquet / events
        results += [
            {"name": "PostgreSQL bytes per event (partitions: heap, TOAST, indexes)",
             "metric": "size", "value": round(pg_per, 1), "unit": "bytes",
             "chain_bytes": round(chain_total / events, 1)},
            {"name": "Parquet bytes per event (zstd, with the chain columns)",
             "metric": "size", "value": round(pq_per, 1), "unit": "bytes",
             "manifest_bytes": round(manifests / events, 2),
             "ratio_to_postgresql": round(pq_per / pg_per, 3)},
            {"name": f"archive {events} events ({MONTHS} months, write + read back + verify)",
             "metric": "throughput", "value": round(events / archive_s), "unit": "events/s",
             "seconds": round(archive_s, 1), "client_cpu_seconds": round(archive_cpu, 1),
             "events_per_client_cpu_s": round(events / archive_cpu)},
            {"name": "verify-archive (offline, every row recomputed)", "metric": "throughput",
             "value": round(events / verify_s), "unit": "events/s",
             "seconds": round(verify_s, 1), "cpu_seconds": round(verify_cpu, 1)},
            {"name": "PostgreSQL: one record's history (admin statement)", "metric": "latency",
             "value": round(pg_median * 1000, 2), "unit": "ms", "rows": pg_rows,
             "rounds": rounds},
        ]
        real = [f"{folder}/year=*/month=*/*.parquet"]
        duck_median, duck_rows = _duck_history(real, rounds)
        assert duck_rows == pg_rows, (duck_rows, pg_rows)
        results.append({"name": f"DuckDB: one record's history over {events} archived events",
                        "metric": "latency", "value": round(duck_median * 1000, 1),
                        "unit": "ms", "rows": duck_rows, "rounds": rounds})
        synthetic = Path(tmp) / "synthetic"
        copies = _replicate(folder, synthetic, events)
        total = events + copies
        big_median, big_rows = _duck_history(
            [*real, f"{synthetic}/year=*/month=*/*.parquet"], rounds)
        assert big_rows == duck_rows, (big_rows, duck_rows)
        results.append({
            "name": f"DuckDB: one record's history over {total} events (1 real + "
                    f"{COPIES} synthetic copies)",
            "metric": "latency", "value": round(big_median * 1000, 1), "unit": "ms",
            "rows": big_rows, "rounds": rounds,
            "ratio_to_real": round(big_median / duck_median, 2)})
    return results


def main() -> None:
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(
        file=open(os.devnull, "w")))  # noqa: SIM115 - open for the life of the process
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--events", type=int, default=None)
    args = parser.parse_args()
    for row in run(quick=args.quick, events=args.events):
        extra = {k: v for k, v in row.items() if k not in ("name", "metric", "value", "unit")}
        detail = ", ".join(f"{k}={v}" for k, v in extra.items())
        print(f"{row['name']:72} {row['value']:>12,} {row['unit']:8} {detail}")


if __name__ == "__main__":
    main()
