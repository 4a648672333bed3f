"""What carrying the context costs a request across a network: a delaying proxy in between.

Each request is one checkout with a *new* audit context (another request id, as successive
requests have), one single-row ``UPDATE`` of a tracked table, and the commit. It runs
through ``AuditPool`` and ``AsyncAuditPool``, and through plain ``psycopg_pool`` pools (the
same tracked table, no context) as the baseline of each; a plain pool on a table without
audit gives the end-to-end figure.

Two settings, in one run:

- **through the proxy** (``bench/_latency.py``): a loopback TCP proxy delays every packet by
  1 ms each way, so that a round trip costs what it costs to a database on the network and
  is visible above the noise. The proxy also counts round trips per request. Target: the
  audit pools take at most 1.05x the plain pool's time.
- **direct** (no proxy): a new context per request against the same context on every
  request (nothing to send). Target: the new context runs at least 0.95x as fast.

The audit pools run as configured by default (a new context in the ``BEGIN``'s message) and,
in the ``pipeline_begin`` rows, with ``pipeline_begin=True`` (the ``BEGIN``, the settings and
the statement in one pipeline: one round trip fewer, more client work); the targets apply to
the default.

Variants are interleaved in short blocks of requests (who goes first rotates), each block a
sample. A ratio is the median, over blocks, of a variant's time against its baseline's in the
same block, measured next to each other: the machine's speed drifts by tens of percent
within a run (a shared machine), which a ratio of two medians over the whole run would pass
on, and a ratio of neighbouring blocks cancels. Direct requests take well under a
millisecond, so there are many blocks (``DIRECT_BLOCKS`` per round).

    PYTHONPATH=src python bench/pool_latency.py           # full run
    PYTHONPATH=src python bench/pool_latency.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from psycopg_pool import AsyncConnectionPool, ConnectionPool

from audit_mw.context import AuditContext, bind, reset
from audit_mw.pool import AsyncAuditPool, AuditPool
from bench._latency import LatencyProxy, latency_proxy
from bench.pool import _database, _prepare

#: Delay the proxy adds to every packet, each way.
DELAY = 0.001
TARGET_PROXY_RATIO = 1.05
TARGET_DIRECT_THROUGHPUT = 0.95
#: Interleaved blocks of requests per round (see _rounds), by setting.
PROXY_BLOCKS = 3
DIRECT_BLOCKS = 40

UPDATE = {
    "plain": b"UPDATE bench_plain SET n = n + 1 WHERE id = 1",
    "audited": b"UPDATE bench_audited SET n = n + 1 WHERE id = 1",
}

Op = Callable[[AuditContext | None], Awaitable[None]]


def _sync_op(pool: ConnectionPool[Any], table: str) -> Op:
    statement = UPDATE[table]

    async def op(context: AuditContext | None) -> None:
        token = bind(context) if context is not None else None
        try:
            with pool.connection() as conn:
                conn.execute(statement)
        finally:
            if token is not None:
                reset(token)

    return op


def _async_op(pool: AsyncConnectionPool[Any], table: str) -> Op:
    statement = UPDATE[table]

    async def op(context: AuditContext | None) -> None:
        token = bind(context) if context is not None else None
        try:
            async with pool.connection() as conn:
                await conn.execute(statement)
        finally:
            if token is not None:
                reset(token)

    return op


#: name -> (setting, pool, table, context, baseline); context "new", "same" or "none".
VARIANTS: dict[str, tuple[str, str, str, str, str]] = {
    "proxy / plain pool, no audit": (
        "proxy", "plain", "plain", "none", "proxy / plain pool, audited table"),
    "proxy / plain pool, audited table": (
        "proxy", "plain", "audited", "none", "proxy / plain pool, audited table"),
    "proxy / AuditPool, new context": (
        "proxy", "audit", "audited", "new", "proxy / plain pool, audited table"),
    "proxy / AuditPool, new context, pipeline_begin": (
        "proxy", "audit+pipeline", "audited", "new", "proxy / plain pool, audited table"),
    "proxy / plain async pool, audited table": (
        "proxy", "async plain", "audited", "none", "proxy / plain async pool, audited table"),
    "proxy / AsyncAuditPool, new context": (
        "proxy", "async audit", "audited", "new", "proxy / plain async pool, audited table"),
    "proxy / AsyncAuditPool, new context, pipeline_begin": (
        "proxy", "async audit+pipeline", "audited", "new",
        "proxy / plain async pool, audited table"),
    "direct / plain pool, no audit": (
        "direct", "plain", "plain", "none", "direct / AuditPool, same context"),
    "direct / AuditPool, same context": (
        "direct", "audit", "audited", "same", "direct / AuditPool, same context"),
    "direct / AuditPool, new context": (
        "direct", "audit", "audited", "new", "direct / AuditPool, same context"),
    "direct / AsyncAuditPool, same context": (
        "direct", "async audit", "audited", "same", "direct / AsyncAuditPool, same context"),
    "direct / AsyncAuditPool, new context": (
        "direct", "async audit", "audited", "new", "direct / AsyncAuditPool, same context"),
    "direct / AuditPool, new context, pipeline_begin": (
        "direct", "audit+pipeline", "audited", "new", "direct / AuditPool, same context"),
}
#: The end-to-end reference of each setting: a plain pool on a table without audit.
NO_AUDIT = {"proxy": "proxy / plain pool, no audit", "direct": "direct / plain pool, no audit"}


def _contexts(count: int, salt: str) -> list[AuditContext]:
    return [
        AuditContext(user_id=f"user-{i % 200}", client_ip="203.0.113.7",
                     request_id=f"req-{salt}-{i}", user_agent="bench/1.0")
        for i in range(count)
    ]


async def _time(op: Op, contexts: list[AuditContext | None]) -> float:
    """Milliseconds per request."""
    start = time.perf_counter()
    for context in contexts:
        await op(context)
    return (time.perf_counter() - start) / len(contexts) * 1e3


def run(quick: bool = False, *, dsn: str | None = None) -> list[dict[str, Any]]:
    """Measure every variant; one dict per variant (see the module docstring).

    Each dict has ``name``, ``metric`` (``ms_per_request``), ``value`` (median over
    blocks), ``unit``, ``baseline``, ``ratio`` (the median over blocks of the block's time
    against the baseline's block measured next to it: above 1 is slower), ``throughput``
    (its inverse), ``ratio_to_no_audit`` (the same, against a plain pool on a table without
    audit, same setting), ``round_trips`` (per request, counted by the proxy; through the
    proxy only), ``target`` and ``target_met`` (on the audit pools' rows), ``rounds`` (the
    blocks measured) and ``requests`` (per block). ``quick``: tiny counts, for tests.
    """
    rounds = 2 if quick else 7
    requests = {"proxy": 5 if quick else 50, "direct": 10 if quick else 50}
    with _database(dsn) as database:
        _prepare(database)
        with latency_proxy(database, DELAY) as proxy:
            return asyncio.run(_measure(database, proxy, rounds, requests))


async def _measure(
    database: str, proxy: LatencyProxy, rounds: int, requests: dict[str, int]
) -> list[dict[str, Any]]:
    options: dict[str, Any] = {"min_size": 1, "max_size": 1}
    dsns = {"proxy": proxy.dsn(database), "direct": database}
    sync_pools: list[ConnectionPool[Any]] = []
    async_pools: list[AsyncConnectionPool[Any]] = []
    # One pool per (setting, pool kind): the direct same- and new-context variants of a
    # pool class share its one connection, so that what differs between them is the
    # context only, not the backend process (its caches, the CPU it lands on).
    shared: dict[tuple[str, str], Any] = {}
    ops: dict[str, Op] = {}
    try:
        for name, (setting, pool_kind, table, _, _) in VARIANTS.items():
            pool_options = dict(options)
            kind = pool_kind.removesuffix("+pipeline")
            if kind != pool_kind:
                pool_options["pipeline_begin"] = True
            existing = shared.get((setting, pool_kind))
            if kind.startswith("async"):
                cls: Any = AsyncAuditPool if kind == "async audit" else AsyncConnectionPool
                if existing is None:
                    existing = cls(dsns[setting], open=False, **pool_options)
                    await existing.open(wait=True)
                    async_pools.append(existing)
                ops[name] = _async_op(existing, table)
            else:
                cls = AuditPool if kind == "audit" else ConnectionPool
                if existing is None:
                    existing = cls(dsns[setting], open=True, **pool_options)
                    existing.wait()
                    sync_pools.append(existing)
                ops[name] = _sync_op(existing, table)
            shared[setting, pool_kind] = existing
        return await _rounds(ops, proxy, rounds, requests)
    finally:
        for pool in sync_pools:
            pool.close()
        for apool in async_pools:
            await apool.close()


def _workload(kind: str, count: int, salt: str) -> list[AuditContext | None]:
    if kind == "none":
        return [None] * count
    if kind == "same":
        return [_contexts(1, "same")[0]] * count
    return list(_contexts(count, salt))


async def _rounds(
    ops: dict[str, Op], proxy: LatencyProxy, rounds: int, requests: dict[str, int]
) -> list[dict[str, Any]]:
    trips: dict[str, float] = {}
    for name, op in ops.items():
        setting, _, _, kind, _ = VARIANTS[name]
        # Warm up past psycopg's prepare threshold (5): its one-off round trip to prepare
        # a statement stays out of the timings.
        await _time(op, _workload(kind, 10, "warm"))
        if setting == "proxy":
            before = proxy.turns
            count = max(requests["proxy"] // 5, 5)
            await _time(op, _workload(kind, count, "trips"))
            trips[name] = (proxy.turns - before) / count

    samples: dict[str, list[float]] = {name: [] for name in ops}
    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection landing in one variant's loop would skew it
    try:
        for round_number in range(rounds):
            names = list(ops)
            shift = round_number % len(names)
            for setting, blocks in (("proxy", PROXY_BLOCKS), ("direct", DIRECT_BLOCKS)):
                # Short interleaved blocks: each variant's block runs next to its
                # baseline's, so that a ratio of the two sees the same machine speed.
                chosen = [name for name in names[shift:] + names[:shift]
                          if VARIANTS[name][0] == setting]
                for block in range(blocks):
                    for name in chosen[block % len(chosen):] + chosen[:block % len(chosen)]:
                        kind = VARIANTS[name][3]
                        workload = _workload(
                            kind, requests[setting], f"{round_number}-{block}")
                        # Untimed: a shared connection's first request after another
                        # variant's block settles what it holds (a lasting context goes to
                        # session level), as it is settled in a run of requests of one kind.
                        await ops[name](workload[0])
                        samples[name].append(await _time(ops[name], workload))
    finally:
        if gc_was_enabled:
            gc.enable()
    return _rows(samples, trips, rounds, requests)


def _rows(
    samples: dict[str, list[float]], trips: dict[str, float], rounds: int,
    requests: dict[str, int],
) -> list[dict[str, Any]]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    rows = []
    for name, median in medians.items():
        setting, kind, _, context, baseline = VARIANTS[name]
        ratio = _paired_ratio(samples[name], samples[baseline])
        row: dict[str, Any] = {
            "name": name,
            "metric": "ms_per_request",
            "value": median,
            "unit": "ms",
            "baseline": baseline,
            "ratio": ratio,
            "throughput": 1 / ratio,
            "ratio_to_no_audit": _paired_ratio(samples[name], samples[NO_AUDIT[setting]]),
        }
        if setting == "proxy":
            row["round_trips"] = trips[name]
        if kind.endswith("audit") and context == "new":
            if setting == "proxy":
                row["target"] = f"ratio <= {TARGET_PROXY_RATIO}"
                row["target_met"] = ratio <= TARGET_PROXY_RATIO
            else:
                row["target"] = f"throughput >= {TARGET_DIRECT_THROUGHPUT}"
                row["target_met"] = 1 / ratio >= TARGET_DIRECT_THROUGHPUT
        row["rounds"] = rounds * (PROXY_BLOCKS if setting == "proxy" else DIRECT_BLOCKS)
        row["requests"] = requests[setting]
        rows.append(row)
    return rows


def _paired_ratio(values: list[float], baseline: list[float]) -> float:
    """The median of each block's time against the baseline's block of the same round."""
    return statistics.median(value / base for value, base in zip(values, baseline, strict=True))


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'variant':<44}{'ms/req':>8}{'ratio':>7}{'thru':>7}{'vs no audit':>12}"
          f"{'RTs':>6}  target")
    for row in results:
        trips = f"{row['round_trips']:.2f}" if "round_trips" in row else "-"
        target = row.get("target", "")
        if target:
            target += " met" if row["target_met"] else " MISSED"
        print(f"{row['name']:<44}{row['value']:>8.3f}{row['ratio']:>7.3f}"
              f"{row['throughput']:>7.3f}{row['ratio_to_no_audit']:>12.3f}{trips:>6}  {target}")
    print(f"\nproxy: every packet delayed {DELAY * 1e3:.0f} ms each way; ratio: time against"
          " the row's baseline; thru = 1/ratio.")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    parser.add_argument("--dsn", help="database to use (default: DATABASE_URL or embedded)")
    arguments = parser.parse_args()
    _print_table(run(quick=arguments.quick, dsn=arguments.dsn))
