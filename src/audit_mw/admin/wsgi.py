"""Serving the admin routes from a WSGI app (Flask, Django's WSGI handler, plain WSGI).

The admin app is ASGI; :class:`AdminWSGI` runs it on an event loop of its own in a daemon
thread (through ``a2wsgi``) and hands every WSGI request to it. An async pool belongs to
the loop it was opened on, so create the pool with ``open=False`` and let the adapter open
it on its loop; close it at shutdown with ``admin.run(pool.close())``::

    from psycopg_pool import AsyncConnectionPool
    from werkzeug.middleware.dispatcher import DispatcherMiddleware

    pool = AsyncConnectionPool(READER_DSN, open=False)
    admin = admin_wsgi_app(pool, authorize=is_auditor)
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/audit": admin})
    app.wsgi_app = WSGIAuditMiddleware(app.wsgi_app)   # outermost: binds the context

The WSGI environ is in ``request.scope["wsgi_environ"]`` for the ``authorize`` callback
(``REMOTE_USER``, cookies, headers). The audit context bound by ``WSGIAuditMiddleware``
cannot follow the request into the loop's thread, so the adapter carries it in the environ
and the access events are attributed from it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

from a2wsgi import ASGIMiddleware
from psycopg_pool import AsyncConnectionPool

from audit_mw.admin.app import WSGI_CONTEXT_KEY, Authorize, admin_app
from audit_mw.context import current

__all__ = ["AdminWSGI", "admin_wsgi_app"]

T = TypeVar("T")


class AdminWSGI:
    """A WSGI app serving :func:`~audit_mw.admin.admin_app` from its own event loop."""

    def __init__(self, pool: AsyncConnectionPool[Any], **options: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="audit-mw-admin", daemon=True)
        self._thread.start()
        self.asgi = admin_app(pool, **options)
        self._wsgi = ASGIMiddleware(self.asgi, loop=self.loop)  # type: ignore[arg-type]
        if pool.closed:
            self.run(pool.open(wait=True))

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the adapter's loop and wait for it (e.g. ``pool.close()``)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """Serve one WSGI request."""
        environ[WSGI_CONTEXT_KEY] = current()
        return self._wsgi(environ, start_response)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop the adapter's loop (after closing the pool with :meth:`run`)."""
        if self.loop.is_running():
            # Requests still parked on the loop (a client that went away) are cancelled and
            # awaited, so that no task is destroyed while pending.
            self.run(_cancel_pending())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self.loop.close()


async def _cancel_pending() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def admin_wsgi_app(
    pool: AsyncConnectionPool[Any], *, authorize: Authorize | None = None, **options: Any
) -> AdminWSGI:
    """The admin routes as a WSGI app; options as for :func:`~audit_mw.admin.admin_app`."""
    return AdminWSGI(pool, authorize=authorize, **options)
