"""Where a new context's time goes on the server: what carrying the settings costs, by how.

One connection, a real server (``--dsn``, else ``DATABASE_URL``, else an embedded
PostgreSQL started for the run), a tracked table. Every variant runs the same transaction as
a plain pool does for one request, ``BEGIN``, a single-row ``UPDATE`` of the tracked table
and ``COMMIT``, each its own simple-protocol message and round trip, and differs only in
what travels with the ``BEGIN`` message (several statements in one simple Query message cost
no round trip of their own). Each transaction carries a new request id and user, as
successive requests do. Variants are interleaved in short blocks within each round (who
goes first rotates); the median over many rounds is reported, as a ratio against the
baseline of the same run: the context already on the connection, nothing sent.

Variants:

- ``context already on the connection``: the baseline;
- ``SELECT 1 with the BEGIN``: the cost of one more statement, whatever it does;
- ``SET LOCAL work_mem``, a built-in setting, and ``SET LOCAL`` of one and of the five
  audit settings, as utility statements (no plan, no result row);
- ``one audit setting`` and ``five audit settings`` with ``set_config``, transaction-local,
  with the ``BEGIN``: the context packed into one setting, or the five ``audit.*``
  settings as they are, in the transaction they attribute;
- ``five audit settings, session level``, in an implicit transaction of their own ahead of
  the ``BEGIN``: what the pools send for a new context (there in a pipeline with the
  statement).

The values are escaped by libpq (``PQescapeLiteral``), as a simple Query message needs.

    PYTHONPATH=src python bench/context_cost.py           # full run
    PYTHONPATH=src python bench/context_cost.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import pq
from psycopg.generators import execute

from audit_mw.context import SETTING_NAMES
from bench.pool import _database, _prepare

UPDATE = b"UPDATE bench_audited SET n = n + 1 WHERE id = 1"
_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
BASELINE = "context already on the connection"

Conn = psycopg.Connection[Any]


def _send(conn: Conn, query: bytes) -> None:
    """One simple Query message (any number of statements), and every result."""
    pgconn = conn.pgconn
    pgconn.send_query(query)
    for result in conn.wait(execute(pgconn)):
        if result.status not in _OK:
            raise RuntimeError((result.error_message or b"").decode())


class _Values:
    """A new request id and user for every transaction, escaped for one connection."""

    def __init__(self) -> None:
        self._count = itertools.count()

    def __call__(self, conn: Conn) -> list[bytes]:
        i = next(self._count)
        escape = pq.Escaping(conn.pgconn).escape_literal
        values = [f"user-{i % 200}", "203.0.113.7", f"req-{i}", "bench/1.0", ""]
        return [escape(value.encode()) for value in values]


def _set_config(names: tuple[str, ...], values: list[bytes], local: bool) -> bytes:
    flag = b"true" if local else b"false"
    return b"SELECT " + b", ".join(
        b"pg_catalog.set_config('%s', %s, %s)" % (name.encode(), value, flag)
        for name, value in zip(names, values, strict=True))


def _variants(values: _Values) -> dict[str, Callable[[Conn], bytes]]:
    """name -> what the BEGIN message of one transaction is."""
    one = SETTING_NAMES[2:3]  # audit.request_id

    def first(conn: Conn) -> list[bytes]:
        return values(conn)[2:3]

    return {
        BASELINE: lambda conn: b"BEGIN",
        "SELECT 1 with the BEGIN": lambda conn: b"BEGIN; SELECT 1",
        "SET LOCAL work_mem with the BEGIN (a built-in setting)":
            lambda conn: b"BEGIN; SET LOCAL work_mem = '4MB'",
        "SET LOCAL audit.request_id with the BEGIN":
            lambda conn: b"BEGIN; SET LOCAL audit.request_id = " + first(conn)[0],
        "five audit settings, SET LOCAL, with the BEGIN":
            lambda conn: b"BEGIN; " + b"; ".join(
                b"SET LOCAL %s = %s" % (name.encode(), value)
                for name, value in zip(SETTING_NAMES, values(conn), strict=True)),
        "one audit setting, set_config, transaction-local, with the BEGIN":
            lambda conn: b"BEGIN; " + _set_config(one, first(conn), True),
        "five audit settings, set_config, transaction-local, with the BEGIN":
            lambda conn: b"BEGIN; " + _set_config(SETTING_NAMES, values(conn), True),
        "five audit settings, session level, committed before the BEGIN":
            lambda conn: _set_config(SETTING_NAMES, values(conn), False) + b"; COMMIT; BEGIN",
    }


def _time(conn: Conn, begin: Callable[[Conn], bytes], iterations: int) -> float:
    """Microseconds per transaction."""
    start = time.perf_counter()
    for _ in range(iterations):
        _send(conn, begin(conn))
        _send(conn, UPDATE)
        _send(conn, b"COMMIT")
    return (time.perf_counter() - start) / iterations * 1e6


def run(quick: bool = False, *, dsn: str | None = None) -> list[dict[str, Any]]:
    """Measure every variant; one dict per variant (see the module docstring)."""
    rounds = 2 if quick else 41
    iterations = 5 if quick else 100
    values = _Values()
    variants = _variants(values)
    with _database(dsn) as database:
        _prepare(database)
        # One connection for every variant, so that what differs is only what is sent (one
        # backend, its caches, its CPU): every variant leaves the session as it found it,
        # but for the values of the audit settings, which no variant reads.
        with psycopg.connect(database, autocommit=True) as conn:
            _send(conn, _set_config(SETTING_NAMES, values(conn), False))
            for begin in variants.values():
                _time(conn, begin, 20)
            samples: dict[str, list[float]] = {name: [] for name in variants}
            order = list(variants)
            for _ in range(rounds):
                for name in order:
                    samples[name].append(_time(conn, variants[name], iterations))
                order = order[1:] + order[:1]
    base = statistics.median(samples[BASELINE])
    rows = []
    for name, values_us in samples.items():
        value = statistics.median(values_us)
        rows.append({
            "name": name, "metric": "us_per_transaction", "value": round(value, 1),
            "unit": "us", "baseline": BASELINE, "ratio": round(value / base, 3),
            "extra_us": round(value - base, 1), "rounds": rounds,
            "iterations": iterations, "samples": [round(s, 1) for s in values_us],
        })
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, to prove it runs")
    parser.add_argument("--dsn", help="a database to use (default: embedded PostgreSQL)")
    args = parser.parse_args()
    for row in run(args.quick, dsn=args.dsn):
        print(f"{row['name']:60s} {row['value']:8.1f} us  {row['ratio']:.3f}x  "
              f"{row['extra_us']:+7.1f} us")


if __name__ == "__main__":
    main()
