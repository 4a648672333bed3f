"""Latency of the admin routes and throughput of exports on a large trail.

A trail of ``N`` events (1,000,000 by default; 20,000 in quick mode) is generated straight
into ``audit.events`` with one ``INSERT ... SELECT generate_series`` on a fresh database of
an embedded PostgreSQL server (or ``DATABASE_URL``): 1,000 users, 12 tables, 50,000 records,
one year of timestamps. Requests go through the whole admin app in-process (httpx ASGI
transport): authorisation, validation, the queries, and the access event each one records.

Measured, interleaved over rounds (median and p95 of all requests):

- a user + 30-day time-range query (``/events?user_id=&from=&to=``);
- one record's history (``/records/{table}/{record_id}``);
- the first page, and the 1,000th page by cursor (50 per page, so 49,950 entries deep;
  the cursor is minted for that position with the app's own secret, as walking 999 pages
  first would), unfiltered and with ``kind=data``;
- the audit viewer's events page (``/ui/``, HTML): first page, 1,000th page by cursor, and
  user + 30-day range, against a target of 200 ms p95 (the JSON routes' is 50 ms);
- export throughput (rows/s, MB/s) through the HTTP route, and the peak RSS of the
  ``audit-mw export`` command over the whole trail against the same command over 100 rows.

``EXPLAIN`` of the common filters is printed by ``__main__``.

    PYTHONPATH=src python bench/admin.py           # 1,000,000 events
    PYTHONPATH=src python bench/admin.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psycopg
import structlog
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from audit_mw import _sql
from audit_mw.admin import admin_app
from audit_mw.admin.export import ExportKey, ExportStats, astream_export
from audit_mw.admin.query import (
    CursorCodec,
    filters_digest,
    parse_event_query,
    parse_export_range,
    parse_history_query,
    where_clause,
)
from audit_mw.capture.schema import install
from bench._server import scratch_database

#: The embedded server's settings when DATABASE_URL is not set: loading, not durability.
ADMIN_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
READER = "audit_mw_bench_admin"
KEY = ExportKey("bench", b"bench-key-0123456789abcdef012345")
SECRET = b"bench-cursor-secret-0123456789ab"
TARGET_P95_MS = 50.0
#: The viewer's pages render HTML on top of the same queries; their own target.
VIEWER_TARGET_P95_MS = 200.0
START = "2024-01-01T00:00:00Z"

GENERATE = """
INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name, record_id,
                          old_values, new_values, changed_fields, app_user_id, client_ip,
                          request_id, user_agent)
SELECT %(start)s::timestamptz + g * %(step)s::interval,
       'data', (ARRAY['INSERT', 'UPDATE', 'DELETE'])[1 + g %% 3], 'public',
       'table_' || (g %% 12), ((g::bigint * 7919) %% 50000)::text,
       CASE WHEN g %% 3 <> 0 THEN jsonb_build_object('id', g %% 50000, 'total', g %% 997,
                                                     'status', 'open') END,
       CASE WHEN g %% 3 <> 2 THEN jsonb_build_object('id', g %% 50000, 'total', g %% 991,
                                                     'status', 'paid') END,
       CASE WHEN g %% 3 = 1 THEN ARRAY['status', 'total'] END,
       'user' || ((g * 31) %% 1000), ('10.' || (g %% 250) || '.0.1')::inet,
       'req-' || g, 'Mozilla/5.0 (bench)'
FROM generate_series(1, %(count)s) AS g
"""

#: EXPLAIN'd by __main__: the common filters, as the app runs them.
EXPLAINS = {
    "user + time range": "/events?user_id=user42&from=2024-03-01T00:00:00Z"
                         "&to=2024-03-31T00:00:00Z",
    "record history": "/records/table_7/4242",
    "no filter, page 1": "/events",
    "table": "/events?table=table_3",
    "time range": "/events?from=2024-06-01T00:00:00Z&to=2024-06-02T00:00:00Z",
    "action": "/events?action=UPDATE",
    "request id": "/events?request_id=req-4242",
}


def _reader_dsn(dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    params["user"] = READER
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})


def _prepare(dsn: str, count: int) -> None:
    with psycopg.connect(dsn) as conn:
        install(conn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [READER]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(READER)))
        conn.execute(sql.SQL("GRANT audit_reader, audit_writer TO {}").format(
            sql.Identifier(READER)))
        step = f"{365 * 86400 / count:.6f} seconds"
        conn.execute(GENERATE, {"start": START, "step": step, "count": count})
        conn.execute("VACUUM ANALYZE audit.events")


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def _latencies(dsn: str, count: int, rounds: int) -> tuple[list[dict[str, Any]], int]:
    reader = _reader_dsn(dsn)
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT id FROM audit.events ORDER BY id DESC OFFSET %s LIMIT 1",
                           [min(999 * 50, count - 51)]).fetchone()
        deep_id = int(row[0]) if row else 1
        data_row = conn.execute(
            "SELECT id FROM audit.events WHERE kind = 'data' ORDER BY id DESC OFFSET %s "
            "LIMIT 1", [min(999 * 50, count - 51)]).fetchone()
        deep_data_id = int(data_row[0]) if data_row else 1
    codec = CursorCodec(SECRET)
    deep = codec.encode(filters_digest("events", {}), deep_id, 1000)
    deep_data = codec.encode(filters_digest("events", {"kind": "data"}), deep_data_id, 1000)
    requests = {
        "user + 30-day range": "/events?user_id=user42&from=2024-03-01T00:00:00Z"
                               "&to=2024-03-31T00:00:00Z",
        "record history": "/records/table_7/4243",
        "cursor page 1": "/events",
        "cursor page 1000": f"/events?cursor={deep}",
        "cursor page 1 (kind=data)": "/events?kind=data",
        "cursor page 1000 (kind=data)": f"/events?kind=data&cursor={deep_data}",
        # The viewer's events page: the same queries, plus the HTML of 50 rows.
        "viewer events page": "/ui/",
        "viewer events page 1000": f"/ui/?cursor={deep}",
        "viewer user + 30-day range": "/ui/?user_id=user42&from=2024-03-01T00:00:00Z"
                                      "&to=2024-03-31T00:00:00Z",
    }
    samples: dict[str, list[float]] = {name: [] for name in requests}
    async with AsyncConnectionPool(reader, min_size=2, max_size=4, open=False) as pool:
        app = admin_app(pool, authorize=lambda request: True, cursor_secret=SECRET)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as http:
            for path in requests.values():  # warm the caches and the pool
                response = await http.get(path)
                assert response.status_code == 200, response.text
            for round_number in range(rounds):
                names = list(requests)
                shift = round_number % len(names)
                for name in names[shift:] + names[:shift]:
                    started = time.perf_counter()
                    response = await http.get(requests[name])
                    samples[name].append((time.perf_counter() - started) * 1000)
                    assert response.status_code == 200, response.text
            rows = [{
                "name": name, "metric": "latency", "unit": "ms",
                "value": round(statistics.median(values), 2),
                "p95": round(_percentile(values, 0.95), 2),
                "requests": len(values),
            } for name, values in samples.items()]

            exported = await _export_throughput(pool, count)
    return rows, exported


async def _export_throughput(pool: AsyncConnectionPool[Any], count: int) -> int:
    export = parse_export_range([("from", "2000-01-01T00:00:00Z"),
                                 ("to", "2100-01-01T00:00:00Z")])
    stats: list[ExportStats] = []
    size = 0
    started = time.perf_counter()
    async for chunk in astream_export(pool, export, KEY, stats_out=stats):
        size += len(chunk)
    elapsed = time.perf_counter() - started
    _EXPORT.update(seconds=elapsed, bytes=size, rows=stats[0].count)
    return stats[0].count


_EXPORT: dict[str, float] = {}


def _cli_export_rss(dsn: str, start: str, end: str, out: Path) -> tuple[float, float]:
    """Peak RSS (MiB) and seconds of ``audit-mw export`` in a child process."""
    secret = base64.b64encode(KEY.secret).decode()
    env = {**os.environ, "AUDIT_HMAC_KEY": f"{KEY.key_id}:{secret}",
           "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")}
    script = (
        "import resource, sys\n"
        "from audit_mw.cli import main\n"
        "status = main(sys.argv[1:])\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
        "sys.exit(status)\n"
    )
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", script, "--dsn", dsn, "export", "--from", start, "--to", end,
         "-o", str(out)], env=env, capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - started
    kib = int(done.stdout.strip().splitlines()[-1])
    return kib / 1024, elapsed


def _explain(dsn: str) -> dict[str, str]:
    """The plan of each common filter, as the app would run it (text EXPLAIN ANALYZE)."""
    codec = CursorCodec(SECRET)
    plans = {}
    with psycopg.connect(dsn) as conn:
        for name, path in EXPLAINS.items():
            route, _, query_string = path.partition("?")
            items = [tuple(p.split("=", 1)) for p in query_string.split("&") if p]
            if route.startswith("/records/"):
                _, _, table, record = route.split("/")
                parse_history_query(table, record, items, codec)  # type: ignore[arg-type]
                statement: sql.Composable = _sql.query("admin", "record_history")
                params: dict[str, Any] = {"table": table, "record_id": record,
                                          "schema": None, "after_id": 0, "limit": 201}
            else:
                query = parse_event_query(items, codec)  # type: ignore[arg-type]
                where, params = where_clause(query.filters)
                statement = _sql.query("admin", "events_page").format(where=where)
                params.update(limit=51, offset=0)
            plan = conn.execute(sql.SQL("EXPLAIN (ANALYZE, COSTS OFF) ") + statement,
                                params).fetchall()
            plans[name] = "\n".join(str(r[0]) for r in plan)
    return plans


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Generate the trail, measure every request and the export; one dict per figure.

    Each dict has ``name``, ``metric``, ``value`` and ``unit``; latencies also ``p95`` and
    ``requests``; the export memory row has ``baseline`` (the same command over 100 rows)
    and ``ratio``. ``quick`` uses 20,000 events and 3 rounds, for tests.
    """
    count = 20_000 if quick else 1_000_000
    rounds = 3 if quick else 40
    with scratch_database(ADMIN_SETTINGS) as dsn:
        _prepare(dsn, count)
        rows, exported = asyncio.run(_latencies(dsn, count, rounds))
        rows.append({"name": "export (HTTP route, ndjson)", "metric": "throughput",
                     "value": round(_EXPORT["rows"] / _EXPORT["seconds"]), "unit": "rows/s",
                     "mb_per_s": round(_EXPORT["bytes"] / _EXPORT["seconds"] / 1e6, 1),
                     "rows": exported})
        with tempfile.TemporaryDirectory() as folder:
            small_rss, _ = _cli_export_rss(dsn, "2024-01-01T00:00:00Z",
                                           "2024-01-01T00:01:00Z", Path(folder) / "small")
            big_rss, seconds = _cli_export_rss(dsn, "2000-01-01T00:00:00Z",
                                               "2100-01-01T00:00:00Z", Path(folder) / "big")
        rows.append({"name": f"export {count} rows (audit-mw export)", "metric": "peak RSS",
                     "value": round(big_rss, 1), "unit": "MiB",
                     "baseline": round(small_rss, 1), "ratio": round(big_rss / small_rss, 2),
                     "seconds": round(seconds, 1)})
        if not quick:
            _PLANS.update(_explain(dsn))
    return rows


_PLANS: dict[str, str] = {}


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'figure':<34}{'metric':<12}{'median':>10}{'p95':>10}  unit")
    for row in results:
        p95 = f"{row['p95']:.2f}" if "p95" in row else ""
        print(f"{row['name']:<34}{row['metric']:<12}{row['value']:>10}{p95:>10}  {row['unit']}"
              + (f"  (baseline {row['baseline']}, ratio {row['ratio']})"
                 if "baseline" in row else "")
              + (f"  ({row['mb_per_s']} MB/s)" if "mb_per_s" in row else ""))
    print()
    for label, target, rows in (
            ("JSON routes", TARGET_P95_MS,
             [r for r in results if "p95" in r and not r["name"].startswith("viewer")]),
            ("viewer pages", VIEWER_TARGET_P95_MS,
             [r for r in results if "p95" in r and r["name"].startswith("viewer")])):
        worst = max(row["p95"] for row in rows)
        verdict = "within" if worst <= target else "OVER"
        print(f"{label}: worst p95 {worst:.2f} ms: {verdict} the {target:.0f} ms target")
    for name, plan in _PLANS.items():
        print(f"\n-- EXPLAIN {name}\n{plan}")


if __name__ == "__main__":
    # Every access event is also logged (structlog, for a SIEM): keep the rendering cost in
    # the figures, but not the lines on the terminal.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(
        file=open(os.devnull, "w")))  # noqa: SIM115 - open for the life of the process
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 events, for a smoke run")
    results = run(quick=parser.parse_args().quick)
    _print_table(results)
    print(json.dumps(results), file=sys.stderr)
