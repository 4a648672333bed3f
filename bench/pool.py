"""What the audit-aware pools cost: checkout overhead, and an audited single-row UPDATE.

One client, one pooled connection, a real server (``--dsn``, else ``DATABASE_URL``, else an
embedded PostgreSQL started for the run). Every figure is a ratio against a plain
``psycopg_pool.ConnectionPool`` measured in the same run: variants are interleaved within
each round (who goes first rotates) and the median over rounds is reported. Round trips are
counted from the libpq protocol trace of one operation: each run of messages the client
sends before it reads the server's answers is one. A pipeline sends the context, BEGIN and
the statement without waiting, but a local server may answer its first part before the
client traced the rest, so a pipelined operation may show one more than it waited for:
``bench/pool_latency.py`` counts round trips on the wire, through a delaying proxy.

Operations:

- ``checkout``: ``with pool.connection(): pass``, the pool's own cost;
- ``update``: check out, ``UPDATE t SET n = n + 1 WHERE id = 1``, commit, return; on a
  table without audit (the baseline) or a tracked one.

Contexts: ``new`` binds a different context (another request id) for every operation, as
successive requests do; ``same`` keeps one, as several checkouts of one request or job do.

    PYTHONPATH=src python bench/pool.py           # full run
    PYTHONPATH=src python bench/pool.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
from psycopg import pq
from psycopg_pool import ConnectionPool

from audit_mw.capture.schema import install
from audit_mw.capture.tracking import track
from audit_mw.context import AuditContext, bind, reset
from audit_mw.pool import AuditPool
from audit_mw.testing.embedded import EmbeddedServer, resolve_dsn

UPDATE = {
    "plain": b"UPDATE bench_plain SET n = n + 1 WHERE id = 1",
    "audited": b"UPDATE bench_audited SET n = n + 1 WHERE id = 1",
}


@contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    dsn = dsn or resolve_dsn()
    if dsn:
        yield dsn
        return
    with tempfile.TemporaryDirectory(prefix="audit_mw_bench_") as folder:
        server = EmbeddedServer(Path(folder) / "data", settings={
            "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        server.start()
        try:
            yield server.dsn()
        finally:
            server.destroy()


def _prepare(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_plain, bench_audited")
    with psycopg.connect(dsn) as conn:
        install(conn)
        conn.execute("CREATE TABLE bench_plain (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("CREATE TABLE bench_audited (id int PRIMARY KEY, n int NOT NULL)")
        conn.execute("INSERT INTO bench_plain VALUES (1, 0)")
        conn.execute("INSERT INTO bench_audited VALUES (1, 0)")
        track(conn, "bench_audited")


def _contexts(count: int, salt: str) -> list[AuditContext]:
    return [
        AuditContext(user_id=f"user-{i % 200}", client_ip="203.0.113.7",
                     request_id=f"req-{salt}-{i}", user_agent="bench/1.0")
        for i in range(count)
    ]


Op = Callable[[], None]


def _variants(pools: dict[str, ConnectionPool[Any]]) -> dict[str, tuple[str, str, str, str]]:
    """name -> (operation, pool, table, context)."""
    return {
        "checkout / plain pool": ("checkout", "plain", "-", "none"),
        "checkout / AuditPool, new context": ("checkout", "session", "-", "new"),
        "checkout / AuditPool, same context": ("checkout", "session", "-", "same"),
        "checkout / transaction mode": ("checkout", "transaction", "-", "new"),
        "update / plain pool, no audit": ("update", "plain", "plain", "none"),
        "update / plain pool, audited, no context": ("update", "plain", "audited", "none"),
        "update / AuditPool, audited, new context": ("update", "session", "audited", "new"),
        "update / AuditPool, audited, same context": ("update", "session", "audited", "same"),
        "update / transaction mode, audited, new context": (
            "update", "transaction", "audited", "new"),
    }


def _make_op(pool: ConnectionPool[Any], operation: str, table: str) -> Op:
    if operation == "checkout":
        def checkout() -> None:
            with pool.connection():
                pass
        return checkout
    statement = UPDATE[table]

    def update() -> None:
        with pool.connection() as conn:
            conn.execute(statement)
    return update


def _time(op: Op, contexts: list[AuditContext] | None, iterations: int) -> float:
    """Microseconds per operation."""
    start = time.perf_counter()
    if contexts is None:
        for _ in range(iterations):
            op()
    else:
        for i in range(iterations):
            token = bind(contexts[i % len(contexts)])
            try:
                op()
            finally:
                reset(token)
    return (time.perf_counter() - start) / iterations * 1e6


def _round_trips(pool: ConnectionPool[Any], op: Op, context: AuditContext | None) -> int:
    """Client turns (send, then read) during one operation on the pool's only connection."""
    (conn,) = pool._pool  # the idle connection, to trace it
    with tempfile.TemporaryFile("w+") as trace:
        conn.pgconn.trace(trace.fileno())
        conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS | pq.Trace.REGRESS_MODE)
        token = bind(context) if context is not None else None
        try:
            op()
        finally:
            if token is not None:
                reset(token)
            conn.pgconn.untrace()
        trace.flush()
        os.fsync(trace.fileno())
        trace.seek(0)
        lines = trace.read().splitlines()
    return sum(
        1 for before, line in zip(["B", *lines], lines, strict=False)
        if line.startswith("F") and before.startswith("B")
    )


def run(quick: bool = False, *, dsn: str | None = None) -> list[dict[str, Any]]:
    """Measure every variant; one dict per variant, each against the plain pool.

    Each dict has ``name``, ``metric`` (``us_per_op``), ``value`` (median over rounds),
    ``unit``, ``baseline`` (the plain-pool variant of the same operation), ``ratio``
    (value / baseline's value: above 1 is slower), ``round_trips``, ``extra_round_trips``
    (against the baseline), ``rounds`` and ``iterations``. ``quick``: tiny counts, for tests.
    """
    rounds = 2 if quick else 9
    iterations = 20 if quick else 1500
    with _database(dsn) as database:
        _prepare(database)
        options: dict[str, Any] = {"min_size": 1, "max_size": 1, "open": True}
        pools: dict[str, ConnectionPool[Any]] = {
            "plain": ConnectionPool(database, **options),
            "session": AuditPool(database, **options),
            "transaction": AuditPool(database, context_mode="transaction", **options),
        }
        try:
            return _measure(pools, rounds, iterations)
        finally:
            for pool in pools.values():
                pool.close()


def _measure(
    pools: dict[str, ConnectionPool[Any]], rounds: int, iterations: int
) -> list[dict[str, Any]]:
    for pool in pools.values():
        pool.wait()
    variants = _variants(pools)
    same = _contexts(1, "same")
    ops: dict[str, tuple[Op, str]] = {}
    for name, (operation, pool_name, table, context) in variants.items():
        ops[name] = (_make_op(pools[pool_name], operation, table), context)

    def contexts_for(kind: str, salt: str) -> list[AuditContext] | None:
        return None if kind == "none" else same if kind == "same" else _contexts(
            iterations, salt)

    trips: dict[str, int] = {}
    for name, (op, kind) in ops.items():
        pool = pools[variants[name][1]]
        warm = contexts_for(kind, "warm")
        # Past psycopg's prepare threshold (5), so that the one-off round trip that prepares
        # a statement is out of both the timings and the round-trip count.
        _time(op, warm, max(iterations // 10, 10))
        trips[name] = _round_trips(pool, op, None if kind == "none" else _contexts(1, "rt")[0]
                                   if kind == "new" else same[0])

    samples: dict[str, list[float]] = {name: [] for name in ops}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection landing in one variant's loop would skew it
    try:
        for round_number in range(rounds):
            names = list(ops)
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                op, kind = ops[name]
                samples[name].append(_time(op, contexts_for(kind, f"{round_number}"), iterations))
    finally:
        if gc_was_enabled:
            gc.enable()

    medians = {name: statistics.median(values) for name, values in samples.items()}
    results = []
    for name, median in medians.items():
        operation = variants[name][0]
        baseline = next(n for n, v in variants.items() if v[0] == operation and v[1] == "plain")
        results.append({
            "name": name,
            "metric": "us_per_op",
            "value": median,
            "unit": "us",
            "baseline": baseline,
            "ratio": median / medians[baseline],
            "round_trips": trips[name],
            "extra_round_trips": trips[name] - trips[baseline],
            "rounds": rounds,
            "iterations": iterations,
        })
    return results


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'variant':<50}{'µs/op':>9}{'ratio':>8}{'throughput':>12}{'RTs':>5}{'extra':>6}")
    for row in results:
        print(
            f"{row['name']:<50}{row['value']:>9.1f}{row['ratio']:>8.2f}"
            f"{1 / row['ratio']:>11.2f}x{row['round_trips']:>5}{row['extra_round_trips']:>+6}"
        )
    print("\nratio: time per operation against the plain pool's same operation (no audit);"
          " throughput = 1/ratio.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    parser.add_argument("--dsn", help="database to use (default: DATABASE_URL or embedded)")
    arguments = parser.parse_args()
    _print_table(run(quick=arguments.quick, dsn=arguments.dsn))
