"""Seal and verify throughput of the integrity chain, and the verifier's peak memory.

Events are generated straight into ``audit.events`` with ``INSERT ... SELECT
generate_series`` (as a superuser), then sealed and verified with the package's own
functions. The baseline is the bare cost of streaming the same canonical columns out of
PostgreSQL without hashing, measured in the same run, so the ratio is the price of the
cryptography and bookkeeping. Peak memory is traced (``tracemalloc``) in separate,
untimed runs, at a tenth of the trail and at the full trail: it must not grow with it.

    PYTHONPATH=src python bench/integrity.py            # 1,000,000 entries
    PYTHONPATH=src python bench/integrity.py --quick    # a few thousand
    PYTHONPATH=src python bench/integrity.py --entries 200000

With ``DATABASE_URL`` set that server is used (a scratch database is created and dropped);
otherwise an embedded server in a temporary directory.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

import psycopg

from audit_mw import _sql
from audit_mw.capture.schema import install
from audit_mw.integrity import KeyRing, seal, verify
from bench._server import scratch_database

TARGET_VERIFY_PER_S = 100_000
TARGET_SECONDS_PER_MILLION = 15.0
KEYS = KeyRing.build({"bench": b"b" * 32}, current_kid="bench")

GENERATE = """
INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name, record_id,
                          new_values, changed_fields, app_user_id, client_ip, request_id,
                          user_agent, db_role, application_name)
SELECT pg_catalog.statement_timestamp() + g * interval '1 millisecond', 'data',
       CASE WHEN g %% 3 = 0 THEN 'UPDATE' ELSE 'INSERT' END, 'public', 'items', g::text,
       pg_catalog.jsonb_build_object('id', g, 'name', 'item ' || g, 'price', (g %% 1000) / 100.0,
                                     'tags', pg_catalog.jsonb_build_array('a', g %% 7)),
       CASE WHEN g %% 3 = 0 THEN ARRAY['price'] END, 'user' || (g %% 50), '198.51.100.7',
       pg_catalog.md5(g::text), 'Mozilla/5.0 (bench)', 'app', 'bench'
FROM pg_catalog.generate_series(%(first)s::bigint, %(last)s::bigint) AS g
"""


#: The embedded server's settings when DATABASE_URL is not set: loading, not durability.
INTEGRITY_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                      "shared_buffers": "256MB"}


def _generate(conn: psycopg.Connection[Any], first: int, last: int) -> None:
    step = 100_000
    for start in range(first, last + 1, step):
        with conn.transaction():
            conn.execute(GENERATE, {"first": start, "last": min(start + step - 1, last)})
    conn.execute("VACUUM ANALYZE audit.events")


def _stream_only(conn: psycopg.Connection[Any]) -> int:
    """The baseline: stream what verify streams, parse the rows, hash nothing."""
    n = 0
    query = _sql.query("integrity", "chain_entries").format(
        columns=_sql.query("integrity", "canonical_columns"),
        content=_sql.query("integrity", "content_bytes"))
    with conn.transaction(), conn.cursor() as cur, cur.copy(query, {"after": 0}) as copy:
        copy.set_types(["int8", "int8", "bytea", "bytea", "bool", "text", "bytea"])
        for _ in copy.rows():
            n += 1
    return n


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def _peak_mib(fn: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def run(quick: bool = False, entries: int | None = None) -> list[dict[str, Any]]:
    """Seal and verify ``entries`` events (1,000,000; 5,000 when ``quick``); result rows."""
    total = entries or (5_000 if quick else 1_000_000)
    rounds = 3
    tenth = max(total // 10, 1)
    results: list[dict[str, Any]] = []
    with scratch_database(INTEGRITY_SETTINGS) as dsn, psycopg.connect(dsn, autocommit=True) as conn:
        install(conn)
        # A tenth first: its verify memory is the reference the full trail must not outgrow.
        _generate(conn, 1, tenth)
        seal(conn, KEYS)
        small_peak = _peak_mib(lambda: verify(conn, KEYS))
        _generate(conn, tenth + 1, total)
        seal_s, sealed = _timed(lambda: seal(conn, KEYS))
        seal_s_rate = sealed.sealed / seal_s
        stream_times, verify_times = [], []
        for _ in range(rounds):
            # Interleaved, so drift hits both alike.
            stream_times.append(_timed(lambda: _stream_only(conn))[0])
            elapsed, result = _timed(lambda: verify(conn, KEYS))
            assert result.valid, result
            assert result.checked == total, result
            verify_times.append(elapsed)
        full_peak = _peak_mib(lambda: verify(conn, KEYS))
    stream_s = statistics.median(stream_times)
    verify_s = statistics.median(verify_times)
    results += [
        {"name": "seal", "metric": "throughput", "value": round(seal_s_rate), "unit": "entries/s",
         "entries": sealed.sealed, "seconds": round(seal_s, 3), "rounds": 1},
        {"name": "stream only (baseline)", "metric": "throughput",
         "value": round(total / stream_s), "unit": "entries/s", "entries": total,
         "seconds": round(stream_s, 3), "ratio": 1.0, "rounds": rounds},
        {"name": "verify", "metric": "throughput", "value": round(total / verify_s),
         "unit": "entries/s", "entries": total, "seconds": round(verify_s, 3),
         "ratio": round(verify_s / stream_s, 2), "baseline": "stream only",
         "target": TARGET_VERIFY_PER_S, "rounds": rounds},
        {"name": "verify", "metric": "seconds per 1M entries",
         "value": round(verify_s * 1_000_000 / total, 2), "unit": "s",
         "target": TARGET_SECONDS_PER_MILLION},
        {"name": "verify", "metric": f"peak traced memory at {tenth} entries",
         "value": round(small_peak, 2), "unit": "MiB"},
        {"name": "verify", "metric": f"peak traced memory at {total} entries",
         "value": round(full_peak, 2), "unit": "MiB",
         "ratio": round(full_peak / small_peak, 2) if small_peak else None,
         "baseline": f"{tenth} entries"},
        {"name": "process", "metric": "peak resident set size", "unit": "MiB",
         "value": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
    ]
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'name':<24}{'metric':<38}{'value':>12} {'unit':<10}{'ratio':>7}  target")
    for row in results:
        ratio = "" if row.get("ratio") is None else f"{row['ratio']:.2f}"
        target = row.get("target", "")
        print(f"{row['name']:<24}{row['metric']:<38}{row['value']:>12} {row['unit']:<10}"
              f"{ratio:>7}  {target}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few thousand entries")
    parser.add_argument("--entries", type=int, default=None, help="trail size")
    args = parser.parse_args()
    _print_table(run(quick=args.quick, entries=args.entries))
