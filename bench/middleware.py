"""Per-request overhead of the audit middlewares, measured in-process.

The ASGI apps are called directly with a hand-built scope, ``receive`` and ``send``; no
HTTP client or server is involved, so the numbers are the middleware's own cost. The audit
variants run with everything on: a trusted proxy and an ``X-Forwarded-For`` chain to
resolve, a generated request id echoed in the response, a user agent, structlog binding.

Variants are interleaved within each round and the median over rounds is reported, which
keeps drift (CPU frequency, other load) out of the comparison.

    PYTHONPATH=src python bench/middleware.py           # full run
    PYTHONPATH=src python bench/middleware.py --quick   # smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from contextvars import ContextVar
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from audit_mw.web.asgi import AuditMiddleware
from audit_mw.web.wsgi import WSGIAuditMiddleware

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

TARGET_OVERHEAD_US = 10.0
TRUSTED = ["10.0.0.0/8"]
PEER = "10.0.0.1"
FORWARDED_FOR = "198.51.100.4, 10.0.0.7"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"

_reference_var: ContextVar[str | None] = ContextVar("bench_reference", default=None)


class ReferenceMiddleware:
    """The least a context middleware can do: set one contextvar, reset it in finally."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        token = _reference_var.set("request")
        try:
            await self.app(scope, receive, send)
        finally:
            _reference_var.reset(token)


async def _endpoint(request: Request) -> Response:
    return PlainTextResponse("ok")


def _asgi_variants() -> dict[str, ASGIApp]:
    app = Starlette(routes=[Route("/", _endpoint)])
    return {
        "starlette (bare)": app,
        "reference contextvar mw": ReferenceMiddleware(app),
        "AuditMiddleware": AuditMiddleware(app, trusted_proxies=TRUSTED),
    }


_SCOPE: Scope = {
    "type": "http",
    "asgi": {"version": "3.0", "spec_version": "2.4"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/",
    "raw_path": b"/",
    "root_path": "",
    "query_string": b"",
    "headers": [
        (b"host", b"example.test"),
        (b"user-agent", USER_AGENT.encode()),
        (b"accept", b"*/*"),
        (b"x-forwarded-for", FORWARDED_FOR.encode()),
    ],
    "client": (PEER, 50000),
    "server": ("example.test", 80),
}
_REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def _receive() -> Message:
    return _REQUEST


async def _send(message: Message) -> None:
    return None


async def _time_asgi(app: ASGIApp, iterations: int) -> float:
    scope = _SCOPE
    start = time.perf_counter_ns()
    for _ in range(iterations):
        # Starlette writes into the scope, so each request gets its own (same cost for all).
        await app(dict(scope), _receive, _send)
    return (time.perf_counter_ns() - start) / iterations / 1000


def _bare_wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _wsgi_variants() -> dict[str, WSGIApp]:
    return {
        "wsgi app (bare)": _bare_wsgi,
        "WSGIAuditMiddleware": WSGIAuditMiddleware(_bare_wsgi, trusted_proxies=TRUSTED),
    }


_ENVIRON: dict[str, Any] = {
    "REQUEST_METHOD": "GET",
    "PATH_INFO": "/",
    "SERVER_NAME": "example.test",
    "SERVER_PORT": "80",
    "SERVER_PROTOCOL": "HTTP/1.1",
    "REMOTE_ADDR": PEER,
    "HTTP_HOST": "example.test",
    "HTTP_USER_AGENT": USER_AGENT,
    "HTTP_X_FORWARDED_FOR": FORWARDED_FOR,
    "wsgi.url_scheme": "http",
}


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def _time_wsgi(app: WSGIApp, iterations: int) -> float:
    environ = _ENVIRON
    start = time.perf_counter_ns()
    for _ in range(iterations):
        for _chunk in app(dict(environ), _start_response):
            pass
    return (time.perf_counter_ns() - start) / iterations / 1000


def _summarise(
    stack: str, samples: dict[str, list[float]], iterations: int
) -> list[dict[str, Any]]:
    medians = {name: statistics.median(values) for name, values in samples.items()}
    baseline = next(iter(medians.values()))
    return [
        {
            "stack": stack,
            "variant": name,
            "us_per_request": round(median, 3),
            "overhead_us": round(median - baseline, 3),
            "ratio": round(median / baseline, 3),
            "rounds": len(samples[name]),
            "iterations": iterations,
        }
        for name, median in medians.items()
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure every variant; one dict per variant, the bare app of each stack first.

    Each dict has ``stack`` (``asgi``/``wsgi``), ``variant``, ``us_per_request`` (median
    over rounds), ``overhead_us`` and ``ratio`` against the bare app, ``rounds`` and
    ``iterations`` (requests per round and variant). ``quick`` uses tiny counts, for tests.
    """
    rounds = 3 if quick else 15
    asgi_iterations = 20 if quick else 4000
    wsgi_iterations = 50 if quick else 20000

    asgi = _asgi_variants()
    wsgi = _wsgi_variants()
    asgi_samples: dict[str, list[float]] = {name: [] for name in asgi}
    wsgi_samples: dict[str, list[float]] = {name: [] for name in wsgi}

    async def asgi_rounds() -> None:
        for app in asgi.values():  # warm up caches and code paths
            await _time_asgi(app, max(asgi_iterations // 10, 1))
        for round_number in range(rounds):
            names = list(asgi)
            shift = round_number % len(names)  # rotate who goes first
            for name in names[shift:] + names[:shift]:
                asgi_samples[name].append(await _time_asgi(asgi[name], asgi_iterations))

    gc_was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()  # a collection landing in one variant's loop would skew it
    try:
        asyncio.run(asgi_rounds())
        for app in wsgi.values():
            _time_wsgi(app, max(wsgi_iterations // 10, 1))
        for round_number in range(rounds):
            names = list(wsgi)
            shift = round_number % len(names)
            for name in names[shift:] + names[:shift]:
                wsgi_samples[name].append(_time_wsgi(wsgi[name], wsgi_iterations))
    finally:
        if gc_was_enabled:
            gc.enable()

    return _summarise("asgi", asgi_samples, asgi_iterations) + _summarise(
        "wsgi", wsgi_samples, wsgi_iterations
    )


def _print_table(results: list[dict[str, Any]]) -> None:
    print(f"{'stack':<6}{'variant':<26}{'µs/request':>12}{'overhead µs':>13}{'ratio':>8}")
    for row in results:
        print(
            f"{row['stack']:<6}{row['variant']:<26}{row['us_per_request']:>12.2f}"
            f"{row['overhead_us']:>13.2f}{row['ratio']:>8.2f}"
        )
    worst = max(row["overhead_us"] for row in results if "Audit" in row["variant"])
    verdict = "within" if worst <= TARGET_OVERHEAD_US else "OVER"
    print(
        f"\nworst audit overhead {worst:.2f} µs: {verdict} the {TARGET_OVERHEAD_US:.0f} µs target"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts, for a smoke run")
    _print_table(run(quick=parser.parse_args().quick))
