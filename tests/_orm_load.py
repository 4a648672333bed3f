"""The attribution load test for the ORM integrations, over real HTTP.

200 users log in at once; then rounds of 250 concurrent requests, each by a random logged-in
user from its own client IP (``X-Forwarded-For``, the server trusting 127.0.0.1) with its own
request id, update an order. Every captured row is then compared with who sent the request.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import psycopg

USERS = 200
ROUNDS = 3
CONCURRENCY = 250
PASSWORD = "correct horse"

#: (client, username, password) -> (status, request headers that authenticate, user id)
Login = Callable[[httpx.AsyncClient, str, str], Awaitable[tuple[int, dict[str, str], str]]]
#: (client, auth headers plus the request's own, order id, note) -> status
Write = Callable[[httpx.AsyncClient, dict[str, str], int, str], Awaitable[int]]


@dataclass
class Outcome:
    """What the trail says about the load."""

    requests: int = 0
    failed_requests: int = 0
    rows: int = 0
    wrong_users: int = 0
    wrong_ips: int = 0
    missing: int = 0
    #: Rows of the table with no app user and no client IP at all.
    unattributed: int = 0
    samples: list[tuple[str, Any, Any]] = field(default_factory=list)


def check_attributed(outcome: Outcome, dsn: str, requests: int = 750) -> None:
    """Every request stored once, none attributed to another user or IP; every login too."""
    assert outcome.failed_requests == 0
    assert (outcome.requests, outcome.rows, outcome.missing) == (requests, requests, 0)
    assert (outcome.wrong_users, outcome.wrong_ips) == (0, 0), outcome.samples[:5]
    with psycopg.connect(dsn) as conn:
        logins = conn.execute("SELECT count(*) FROM audit.events WHERE kind = 'auth'"
                              " AND action = 'login' AND success").fetchone()
    assert logins == (USERS,)


def check_unattributed(outcome: Outcome) -> None:
    """The negative control (one round, no integration): every row without user or IP."""
    assert outcome.failed_requests == 0
    assert outcome.wrong_users == outcome.rows == outcome.unattributed == CONCURRENCY
    assert outcome.wrong_ips == CONCURRENCY


async def login_all(base_url: str, login: Login, usernames: list[str]
                    ) -> dict[str, tuple[dict[str, str], str]]:
    """Log every user in at once; every login must succeed."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=20, limits=limits) as client:
        results = await asyncio.gather(*(login(client, u, PASSWORD) for u in usernames))
    failed = [u for u, (status, _, _) in zip(usernames, results, strict=True) if status != 200]
    assert not failed, f"{len(failed)} of {len(usernames)} concurrent logins failed"
    return {u: (headers, uid) for u, (_, headers, uid) in zip(usernames, results, strict=True)}


async def _round(  # noqa: PLR0917 - one round's parameters, positional in one call
        base_url: str, write: Write, sessions: dict[str, tuple[dict[str, str], str]],
        number: int, orders: int, rng: random.Random,
) -> tuple[dict[str, tuple[str, str]], int]:
    expected: dict[str, tuple[str, str]] = {}
    jobs = []
    names = list(sessions)
    for i in range(CONCURRENCY):
        headers, uid = sessions[rng.choice(names)]
        ip = f"198.18.{number}.{i + 1}"
        request_id = f"load-{number}-{i}-{rng.getrandbits(32):08x}"
        expected[request_id] = (uid, ip)
        jobs.append((dict(headers, **{"x-forwarded-for": ip, "x-request-id": request_id}),
                     rng.randrange(1, orders + 1), request_id))
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base_url, timeout=20, limits=limits) as client:
        statuses = await asyncio.gather(*(write(client, h, o, n) for h, o, n in jobs))
    return expected, sum(1 for s in statuses if s != 200)


def run_load(base_url: str, dsn: str, table: str, login: Login, write: Write, *,
             usernames: list[str], orders: int, rounds: int = ROUNDS,
             sessions: dict[str, tuple[dict[str, str], str]] | None = None) -> Outcome:
    """Log everyone in (unless ``sessions`` are given), run the rounds, read the trail."""
    rng = random.Random(17)  # noqa: S311 - test data, reproducible
    if sessions is None:
        sessions = asyncio.run(login_all(base_url, login, usernames))
    outcome = Outcome()
    expected: dict[str, tuple[str, str]] = {}
    for number in range(rounds):
        got, failed = asyncio.run(_round(base_url, write, sessions, number, orders, rng))
        expected |= got
        outcome.failed_requests += failed
    outcome.requests = len(expected)
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT request_id, app_user_id, host(client_ip) FROM audit.events"
            " WHERE kind = 'data' AND table_name = %s AND request_id = ANY(%s)",
            [table, list(expected)]).fetchall()
        others = conn.execute(
            "SELECT count(*) FROM audit.events WHERE kind = 'data' AND table_name = %s"
            " AND (request_id IS NULL OR NOT request_id = ANY(%s))",
            [table, list(expected)]).fetchone()
        unattributed = conn.execute(
            "SELECT count(*) FROM audit.events WHERE kind = 'data' AND table_name = %s"
            " AND app_user_id IS NULL AND client_ip IS NULL", [table]).fetchone()
    outcome.unattributed = int(unattributed[0]) if unattributed else 0
    seen = set()
    for request_id, user, ip in rows:
        seen.add(request_id)
        want_user, want_ip = expected[request_id]
        if user != want_user:
            outcome.wrong_users += 1
            outcome.samples.append((request_id, user, want_user))
        if ip != want_ip:
            outcome.wrong_ips += 1
    outcome.rows = len(rows)
    # Rows under no request id of ours, or another: attributed to nothing we sent.
    extra = int(others[0]) if others else 0
    outcome.wrong_users += extra
    outcome.wrong_ips += extra
    outcome.rows += extra
    outcome.missing = len(expected) - len(seen)
    return outcome
