"""What the server in front does to the client address the middleware records.

uvicorn rewrites the ASGI peer from ``X-Forwarded-For`` before any middleware runs
(``--proxy-headers`` is on by default and trusts 127.0.0.1): a local client that sends the
header is then recorded with the address it claims. With ``--no-proxy-headers`` the
middleware's own ``trusted_proxies`` decide. See ``docs/context.md``.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from audit_mw.context import current
from audit_mw.web.asgi import AuditMiddleware

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _seen(app: Any) -> str | None:
    async def endpoint(scope: Any, receive: Any, send: Any) -> None:
        body = (current().client_ip or "none").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=app(endpoint), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        response = await http.get("/", headers={"x-forwarded-for": "1.2.3.4"})
    return response.text


async def test_uvicorn_proxy_headers_decide_before_the_middleware() -> None:
    # uvicorn's defaults: --proxy-headers, --forwarded-allow-ips 127.0.0.1.
    with_defaults = await _seen(lambda inner: ProxyHeadersMiddleware(
        AuditMiddleware(inner), trusted_hosts="127.0.0.1"))
    assert with_defaults == "1.2.3.4"  # the middleware trusted nobody, and still got it
    # --no-proxy-headers: the middleware sees the real peer and trusts nothing by default.
    no_proxy_headers = await _seen(AuditMiddleware)
    assert no_proxy_headers == "127.0.0.1"
    # The proxy listed in the middleware: the header is honoured, by the middleware's rules.
    trusted = await _seen(lambda inner: AuditMiddleware(inner, trusted_proxies=["127.0.0.1"]))
    assert trusted == "1.2.3.4"
    # uvicorn told to trust nobody (--forwarded-allow-ips ""): the peer stays the peer.
    nobody = await _seen(lambda inner: ProxyHeadersMiddleware(
        AuditMiddleware(inner), trusted_hosts=[]))
    assert nobody == "127.0.0.1"
