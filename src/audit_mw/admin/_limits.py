"""What keeps the admin routes from being turned against the trail or the application.

- :class:`DenialLimiter`: refused requests are recorded, but aggregated per client and
  window, under a global budget: a flood of refusals writes a bounded number of rows and
  leaves the pool to the application.
- :class:`ExportGate`: a cap on concurrent exports, so query routes keep their connections.
- :class:`BoundedStreamingResponse`: an export stream with a total time limit and a limit
  on how long one chunk may wait for a client that does not read; when either runs out,
  or the client goes away, the body is closed at once, which ends its transaction and
  returns its connection.
- :func:`cursor_secret_from`: a cursor secret every worker of a deployment derives alike.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import anyio
import structlog
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from audit_mw.admin._export_format import ExportKey, ExportSigningKey
from audit_mw.errors import ConfigurationError

__all__ = ["BoundedStreamingResponse", "DenialLimiter", "ExportGate", "cursor_secret_from"]

CURSOR_SECRET_ENV: Final = "AUDIT_CURSOR_SECRET"  # noqa: S105 - a variable name, not a secret
log = structlog.get_logger("audit_mw.admin")


@dataclass
class _Window:
    started: float
    suppressed: int = 0


@dataclass
class DenialLimiter:
    """Decides which refusals are written: the first of each client in each ``window``
    seconds, carrying the count of those held back since the last one written, and at most
    ``budget`` of them per window over all clients (the rest are counted and carried too).

    Memory is bounded: at most ``max_clients`` clients are tracked; beyond that, refusals
    count against one shared entry.
    """

    window: float = 60.0
    budget: int = 60
    max_clients: int = 10_000
    clock: Callable[[], float] = time.monotonic
    _clients: dict[str, _Window] = field(default_factory=dict)
    _spent: int = 0
    _budget_started: float = 0.0

    def admit(self, client: str) -> int | None:
        """The number of refusals to record now for ``client`` (this one and those held
        back), or ``None`` to hold this one back."""
        now = self.clock()
        if now - self._budget_started >= self.window:
            self._budget_started, self._spent = now, 0
        if client not in self._clients and len(self._clients) >= self.max_clients:
            self._prune(now)
            if len(self._clients) >= self.max_clients:
                client = "[other clients]"
        entry = self._clients.get(client)
        if entry is not None and now - entry.started < self.window:
            entry.suppressed += 1
            return None
        carried = entry.suppressed if entry is not None else 0
        if self._spent >= self.budget:
            if entry is None:
                entry = self._clients[client] = _Window(started=now - self.window)
            entry.suppressed += 1
            return None
        self._spent += 1
        self._clients[client] = _Window(started=now)
        return carried + 1

    def _prune(self, now: float) -> None:
        stale = [k for k, w in self._clients.items()
                 if now - w.started >= self.window and not w.suppressed]
        for key in stale:
            del self._clients[key]


class ExportGate:
    """At most ``limit`` exports at a time in this process; :meth:`try_enter` says no at
    once rather than queueing (the caller answers 429)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigurationError("max_concurrent_exports must be at least 1")
        self.limit = limit
        self.active = 0

    def try_enter(self) -> bool:
        """Take a slot; ``False`` when all are taken."""
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        """Give the slot back."""
        self.active = max(0, self.active - 1)


class BoundedStreamingResponse(StreamingResponse):
    """A streaming response cut off after ``total`` seconds, or when one chunk waits more
    than ``idle`` seconds for the client to take it. The body is always closed before the
    response returns (also on a disconnect), so whatever it holds is released at once."""

    def __init__(self, content: AsyncIterator[bytes], *, total: float, idle: float,
                 on_exit: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._body: AsyncIterator[bytes] = content
        self.total = total
        self.idle = idle
        self._on_exit = on_exit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            with anyio.move_on_after(self.total) as scope_total:
                await super().__call__(scope, receive, send)
            if scope_total.cancelled_caught:
                log.warning("admin export cut off: total time limit", seconds=self.total)
        finally:
            with anyio.CancelScope(shield=True):
                closer = getattr(self._body, "aclose", None)
                try:
                    if closer is not None:
                        await closer()
                except Exception:  # the connection may be gone already: release, report
                    log.exception("admin export: closing the stream failed")
                finally:
                    if self._on_exit is not None:
                        self._on_exit()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        async for chunk in self._body:
            with anyio.move_on_after(self.idle) as waiting:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            if waiting.cancelled_caught:
                log.warning("admin export cut off: the client stopped reading",
                            seconds=self.idle)
                return
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def cursor_secret_from(
    given: bytes | None,
    export_key: ExportKey | ExportSigningKey | None,
    environ: Mapping[str, str] | None = None,
) -> bytes:
    """The key that signs pagination cursors, the same in every worker of a deployment.

    In order: ``given``; ``AUDIT_CURSOR_SECRET`` (base64, at least 16 bytes); derived from
    the export key (HMAC-SHA256 of a fixed label, so the key itself never signs cursors);
    else random, with a warning: cursors then work only on the worker that issued them.
    """
    if given is not None:
        if len(given) < 16:
            raise ConfigurationError("cursor_secret must be at least 16 bytes")
        return given
    env = os.environ if environ is None else environ
    text = env.get(CURSOR_SECRET_ENV, "").strip()
    if text:
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(f"{CURSOR_SECRET_ENV} is not valid base64") from None
        if len(raw) < 16:
            raise ConfigurationError(f"{CURSOR_SECRET_ENV} must be at least 16 bytes")
        return raw
    if isinstance(export_key, ExportSigningKey):
        seed = export_key.private.private_bytes_raw()
        return hmac.new(seed, b"audit_mw cursor secret v1", hashlib.sha256).digest()
    if isinstance(export_key, ExportKey):
        return hmac.new(export_key.secret, b"audit_mw cursor secret v1",
                        hashlib.sha256).digest()
    log.warning("admin cursor secret is random for this process: set AUDIT_CURSOR_SECRET or "
                "AUDIT_EXPORT_KEY so cursors work on every worker")
    return secrets.token_bytes(32)
