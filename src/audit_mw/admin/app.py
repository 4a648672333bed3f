"""The admin routes: a Starlette app to query, trace, export and verify the trail.

Mount it where the application wants it (``Mount("/audit", admin_app(pool, authorize=...))``)
or serve it from a WSGI app through :func:`~audit_mw.admin.wsgi.admin_wsgi_app`.

Every request is authorised first, before any input is read: ``authorize(request)`` must
return ``True`` (or an awaitable of ``True``); anything else is a 403, and an
``HTTPException(401)`` raised by the callback is a 401. Without a callback every request is
refused. Refusals are recorded as authorisation failures; successful queries, exports and
status reads as access events with their filters and row counts (see ``_access``).

Bad input is a 400 with ``{"error": "bad_request", "parameter": ..., "message": ...}``; a
database that is down or too slow is a 503; nothing ever answers with SQL or a traceback.
"""

from __future__ import annotations

import inspect
import ipaddress
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Final

import anyio
import psycopg
import psycopg_pool
import structlog
from psycopg_pool import AsyncConnectionPool
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from audit_mw import _sql
from audit_mw.admin import _access
from audit_mw.admin._access import Actor, TrailAccessAction
from audit_mw.admin._limits import (
    BoundedStreamingResponse,
    DenialLimiter,
    ExportGate,
    cursor_secret_from,
)
from audit_mw.admin.export import (
    MEDIA_TYPES,
    ExportKey,
    ExportSigningKey,
    ExportStats,
    astream_export,
    export_signing_key_from_env,
)
from audit_mw.admin.openapi import openapi_document
from audit_mw.admin.query import (
    COUNT_CAP,
    CursorCodec,
    ExportRange,
    filters_digest,
    no_parameters,
    parse_event_query,
    parse_export_range,
    parse_history_query,
    where_clause,
)
from audit_mw.admin.viewer import viewer_routes
from audit_mw.context import AuditContext, current
from audit_mw.errors import AuditError, EventWriteError, QueryError
from audit_mw.integrity.runs import run_to_json
from audit_mw.web.asgi import user_from_scope

__all__ = ["Authorize", "admin_app"]

#: ``authorize(request)``: ``True`` allows; anything else refuses. May be async.
Authorize = Callable[[Request], bool | Awaitable[bool]]
Handler = Callable[[Request], Awaitable[Response]]

#: The WSGI adapter puts the caller's bound audit context here (it cannot cross threads).
WSGI_CONTEXT_KEY: Final = "audit_mw.context"
_MAX_ID: Final = 2**63 - 1

log = structlog.get_logger("audit_mw.admin")


@dataclass(frozen=True, slots=True)
class _Limits:
    """The bounds of :func:`admin_app` (see its docstring)."""

    max_concurrent_exports: int
    export_timeout: float
    export_idle_timeout: float
    denial_window: float
    denial_budget: int


class _Unavailable(Exception):
    """The trail cannot be read or the access cannot be recorded right now (a 503)."""


# The event writer raises EventWriteError when it can neither store nor spool an event.
_RECORD_FAILURES = (EventWriteError, psycopg.Error, psycopg_pool.PoolTimeout,
                    psycopg_pool.PoolClosed)


def _error(status: int, error: str, message: str, **extra: str) -> JSONResponse:
    return JSONResponse({"error": error, "message": message, **extra}, status_code=status)


def _client_ip(request: Request) -> str | None:
    host = request.client.host if request.client else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:  # a test client, or a unix socket
        return None


def _actor(request: Request) -> Actor:
    scope = request.scope
    context = current()
    environ = scope.get("wsgi_environ") or {}
    carried = environ.get(WSGI_CONTEXT_KEY)
    if context.user_id is None and isinstance(carried, AuditContext):
        context = carried
    try:
        user = user_from_scope(scope)
    except AuditError:
        user = None
    remote_user = environ.get("REMOTE_USER")
    return Actor.from_context(
        context,
        user_id=user or (remote_user if isinstance(remote_user, str) else None),
        client_ip=_client_ip(request),
        user_agent=request.headers.get("user-agent"),
    )


def _changes(event: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    old = event.get("old_values") or {}
    new = event.get("new_values") or {}
    action = event.get("action")
    if action == "INSERT":
        names = list(new)
    elif action == "DELETE":
        names = list(old)
    elif action == "UPDATE":
        names = event.get("changed_fields") or sorted(
            k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    else:
        return {}
    return {n: {"old": old.get(n), "new": new.get(n)} for n in names}


def _failure(exc: Exception) -> Response:
    """The JSON answer for a failed request: never SQL, never a traceback."""
    if isinstance(exc, QueryError):
        return _error(400, "bad_request", exc.message, parameter=exc.parameter)
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return _error(503, "unavailable",
                      "the query took too long; narrow the filters or the time range")
    if isinstance(exc, _Unavailable):
        return _error(503, "unavailable", str(exc))
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        log.error("the admin routes' database role cannot read the trail; grant audit_reader")
        return _error(503, "unavailable", "the audit trail cannot be read right now")
    if isinstance(exc, psycopg.OperationalError | psycopg_pool.PoolTimeout
                  | psycopg_pool.PoolClosed):
        log.exception("audit trail unavailable", exc_info=exc)
        return _error(503, "unavailable", "the audit trail cannot be read right now")
    log.exception("admin route failed", exc_info=exc)
    return _error(500, "internal_error", "internal error")


class _AdminRoutes:
    """The endpoints, sharing one configuration."""

    def __init__(  # noqa: PLR0917 - one private caller, in order
        self,
        pool: AsyncConnectionPool[Any],
        authorize: Authorize | None,
        codec: CursorCodec,
        export_key: ExportKey | ExportSigningKey | None,
        statement_timeout: float,
        limits: _Limits,
    ) -> None:
        self.pool = pool
        self.authorize = authorize
        self.codec = codec
        self.export_key = export_key
        self.timeout_ms = str(max(1, round(statement_timeout * 1000)))
        self.limits = limits
        self.denials = DenialLimiter(window=limits.denial_window, budget=limits.denial_budget)
        self.exports = ExportGate(limits.max_concurrent_exports)

    # -- plumbing ---------------------------------------------------------------------

    async def _allowed(self, request: Request) -> Response | None:
        status, reason = 403, "not authorised to read the audit trail"
        if self.authorize is None:
            reason = "the admin routes have no authorize callback: every request is refused"
        else:
            try:
                verdict = self.authorize(request)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
                if verdict is True:
                    return None
            except HTTPException as exc:
                if exc.status_code == 401:
                    status, reason = 401, "authentication required"
            except Exception:  # a failing callback refuses: deny by default
                log.exception("admin authorize callback failed")
        # Aggregated per client (address and user), path and window, under a budget: a
        # flood of refusals writes a bounded number of rows and leaves the pool alone.
        path = request.url.path[:256]
        who = _actor(request).user_id or "anonymous"
        count = self.denials.admit(f"{_client_ip(request) or 'unknown'} {who} {path}")
        if count is not None:
            await self._record_safely(
                request, TrailAccessAction.DENIED, success=False, reason=reason,
                metadata={"method": request.method, "path": path,
                          "count": count, "window_seconds": self.limits.denial_window})
        error = "unauthorized" if status == 401 else "forbidden"
        return _error(status, error, reason)

    async def _record_safely(self, request: Request, action: TrailAccessAction, **kw: Any) -> None:
        try:
            await _access.arecord(self.pool, action, _actor(request), **kw)
        except _RECORD_FAILURES:
            log.exception("could not record an access to the audit trail", action=str(action))

    async def _record(self, request: Request, action: TrailAccessAction, **kw: Any) -> None:
        try:
            await _access.arecord(self.pool, action, _actor(request), success=True, **kw)
        except _RECORD_FAILURES as exc:
            log.exception("could not record an access to the audit trail", action=str(action))
            raise _Unavailable("the access could not be recorded, so nothing is served") from exc

    @asynccontextmanager
    async def _reading(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(_sql.query("admin", "read_only"), {"timeout_ms": self.timeout_ms})
            yield conn

    def endpoint(self, handler: Handler) -> Handler:
        """Authorise, run ``handler``, and turn every failure into a JSON answer."""

        async def run(request: Request) -> Response:
            refused = await self._allowed(request)
            if refused is not None:
                return refused
            try:
                return await handler(request)
            except Exception as exc:  # every failure becomes JSON; see _failure
                return _failure(exc)

        return run

    # -- endpoints --------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        query = parse_event_query(request.query_params.multi_items(), self.codec)
        where, params = where_clause(query.filters, before_id=query.before_id)
        count_where, count_params = where_clause(query.filters)
        async with self._reading() as conn:
            rows = await (await conn.execute(
                _sql.query("admin", "events_page").format(where=where),
                {**params, "limit": query.limit + 1, "offset": query.offset},
            )).fetchall()
            counted = await (await conn.execute(
                _sql.query("admin", "events_count").format(where=count_where),
                {**count_params, "cap": COUNT_CAP + 1},
            )).fetchone()
        matches = int(counted[0]) if counted else 0
        page_rows = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            next_cursor = self.codec.encode(filters_digest("events", query.filters),
                                            int(page_rows[-1][0]), query.page + 1)
        total = min(matches, COUNT_CAP)
        await self._record(request, TrailAccessAction.QUERIED, metadata={
            "endpoint": "events", "filters": query.described_filters(), "rows": len(page_rows),
            "page": query.page, "limit": query.limit, "cursor": query.before_id is not None,
        })
        # The events are already JSON (row_to_json): splice them in rather than parse them
        # and print them again.
        tail = json.dumps({"total": total, "total_exact": matches <= COUNT_CAP,
                           "page": query.page, "limit": query.limit,
                           "next_cursor": next_cursor}, separators=(",", ":"))
        body = '{"events":[' + ",".join(text for _, text in page_rows) + "]," + tail[1:]
        return Response(body.encode(), media_type="application/json")

    async def event(self, request: Request) -> Response:
        raw = request.path_params["id"]
        no_parameters(request.query_params.multi_items())
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 19) or not (
                0 < int(raw) <= _MAX_ID):
            raise QueryError("id", "must be a positive whole number")
        async with self._reading() as conn:
            row = await (await conn.execute(
                _sql.query("admin", "event_by_id"), {"id": int(raw)})).fetchone()
        await self._record(request, TrailAccessAction.QUERIED, metadata={
            "endpoint": "event", "filters": {"id": int(raw)}, "rows": 0 if row is None else 1})
        if row is None:
            return _error(404, "not_found", f"no event with id {int(raw)}")
        return Response(row[1].encode(), media_type="application/json")

    async def history(self, request: Request) -> Response:
        query = parse_history_query(
            request.path_params["table"], request.path_params["record_id"],
            request.query_params.multi_items(), self.codec)
        async with self._reading() as conn:
            rows = await (await conn.execute(_sql.query("admin", "record_history"), {
                "table": query.table, "record_id": query.record_id, "schema": query.schema,
                "after_id": query.after_id or 0, "limit": query.limit + 1,
            })).fetchall()
        page_rows = rows[: query.limit]
        next_cursor = None
        if len(rows) > query.limit:
            next_cursor = self.codec.encode(filters_digest("records", query.filters),
                                            int(page_rows[-1][0]), query.page + 1)
        history = []
        for _, text in page_rows:
            event = json.loads(text)
            event["changes"] = _changes(event)
            history.append(event)
        await self._record(request, TrailAccessAction.QUERIED, metadata={
            "endpoint": "records", "filters": query.filters, "rows": len(history),
            "page": query.page, "limit": query.limit})
        return JSONResponse({
            "table": query.table, "schema": query.schema, "record_id": query.record_id,
            "history": history, "page": query.page, "limit": query.limit,
            "next_cursor": next_cursor,
        })

    async def export(self, request: Request) -> Response:
        export = parse_export_range(request.query_params.multi_items())
        key = self.export_key or export_signing_key_from_env()
        if key is None:
            raise _Unavailable("exports are signed and need a key: set AUDIT_EXPORT_KEY")
        if not self.exports.try_enter():
            busy = _error(429, "too_many_exports",
                          f"{self.exports.limit} exports are running; try again later")
            busy.headers["retry-after"] = "30"
            return busy
        try:
            return await self._start_export(request, export, key)
        except BaseException:
            self.exports.leave()
            raise

    async def _start_export(self, request: Request, export: ExportRange,
                            key: ExportKey | ExportSigningKey) -> Response:
        filters = {"from": export.start.isoformat(), "to": export.end.isoformat(),
                   "format": export.format}
        # Recorded before any data leaves; the end (rows, digest) is recorded when it is done.
        await self._record(request, TrailAccessAction.EXPORT_STARTED,
                           metadata={"endpoint": "export", "filters": filters})
        actor = _actor(request)
        stats: list[ExportStats] = []

        async def body() -> AsyncIterator[bytes]:
            try:
                async with aclosing(astream_export(
                        self.pool, export, key, stats_out=stats,
                        total_timeout=self.limits.export_timeout,
                        # The server's limit is the backstop of the stream's own.
                        idle_timeout=2 * self.limits.export_idle_timeout + 5)) as chunks:
                    async for chunk in chunks:
                        yield chunk
            finally:
                done = stats[0] if stats else ExportStats()
                with anyio.CancelScope(shield=True):
                    try:
                        await _access.arecord(
                            self.pool, TrailAccessAction.EXPORTED, actor, success=done.complete,
                            reason=None if done.complete else "the export did not finish",
                            metadata={"endpoint": "export", "filters": filters,
                                      "rows": done.count, "sha256": done.sha256 or None})
                    except _RECORD_FAILURES:
                        log.exception("could not record the end of an export")

        stamp = f"{export.start:%Y%m%dT%H%M%S}-{export.end:%Y%m%dT%H%M%S}"
        return BoundedStreamingResponse(
            body(), total=self.limits.export_timeout, idle=self.limits.export_idle_timeout,
            on_exit=self.exports.leave, media_type=MEDIA_TYPES[export.format], headers={
            "content-disposition": f'attachment; filename="audit-export-{stamp}.{export.format}"',
            "x-content-type-options": "nosniff",
            "cache-control": "no-store",
        })

    async def verify(self, request: Request) -> Response:
        no_parameters(request.query_params.multi_items())
        async with self._reading() as conn:
            status = await integrity_status(conn)
        await self._record(request, TrailAccessAction.QUERIED,
                           metadata={"endpoint": "verify", "filters": {}, "rows": 0})
        return JSONResponse(status)

    async def openapi(self, request: Request) -> Response:
        no_parameters(request.query_params.multi_items())
        return JSONResponse(openapi_document(request.scope.get("root_path") or ""))


async def integrity_status(conn: psycopg.AsyncConnection[Any]) -> dict[str, Any]:
    """The integrity position and the latest recorded verification run, in a few index
    lookups: no scan, however long the trail, and never a verification itself."""
    tables = await (await conn.execute(_sql.query("admin", "integrity_tables"))).fetchone()
    has_chain, has_checkpoints, has_runs = (
        (bool(tables[0]), bool(tables[1]), bool(tables[2])) if tables else (False,) * 3)
    latest_row = await (await conn.execute(_sql.query("admin", "latest_event"))).fetchone()
    latest = int(latest_row[0]) if latest_row and latest_row[0] is not None else 0
    sealed = 0
    if has_chain:
        row = await (await conn.execute(_sql.query("admin", "sealed_position"))).fetchone()
        sealed = int(row[0]) if row and row[0] is not None else 0
    checkpoint = None
    if has_checkpoints:
        cur = await conn.execute(_sql.query("admin", "latest_checkpoint"))
        found = await cur.fetchone()
        if found is not None:
            names = [d.name for d in cur.description or ()]
            checkpoint = dict(zip(names, found, strict=True))
            checkpoint["created_at"] = checkpoint["created_at"].isoformat()
    last_verification = None
    if has_runs:
        cur = await conn.execute(_sql.query("admin", "latest_verification"))
        found = await cur.fetchone()
        if found is not None:
            last_verification = run_to_json([d.name for d in cur.description or ()], found)
    return {
        "integrity_installed": has_chain and has_checkpoints,
        "latest_event_id": latest or None,
        "sealed_position": sealed,
        # ids are never reused and may have gaps, so this bounds the backlog from above.
        "unsealed_backlog_max": max(0, latest - sealed),
        "checkpoint": checkpoint,
        "last_verification": last_verification,
    }


def admin_app(
    pool: AsyncConnectionPool[Any],
    *,
    authorize: Authorize | None = None,
    cursor_secret: bytes | None = None,
    cursor_ttl: float = 3600.0,
    export_key: ExportKey | ExportSigningKey | None = None,
    statement_timeout: float = 5.0,
    max_concurrent_exports: int = 2,
    export_timeout: float = 3600.0,
    export_idle_timeout: float = 60.0,
    denial_window: float = 60.0,
    denial_budget: int = 60,
) -> Starlette:
    """The admin routes as a Starlette app, to mount at ``/audit``.

    - ``pool``: an open :class:`psycopg_pool.AsyncConnectionPool` (an ``AsyncAuditPool``
      works) whose role has ``audit_reader``; it is never opened, closed or reconfigured.
    - ``authorize``: ``(request) -> bool`` or an async one; only ``True`` allows. Without it
      every request is refused (deny by default).
    - ``cursor_secret``: the key that signs pagination cursors (at least 16 bytes); default
      ``AUDIT_CURSOR_SECRET`` (base64), else derived from the export key, so every worker
      of one deployment accepts the cursors of the others; random (with a warning) only
      when neither is configured. ``cursor_ttl``: seconds a cursor stays valid.
    - ``export_key``: the key that signs export manifests: an :class:`ExportSigningKey`
      (Ed25519; default ``AUDIT_EXPORT_KEY``), so the web process never holds the sealing
      key; an HMAC :class:`ExportKey` is accepted too (then an auditor needs that secret).
    - ``statement_timeout``: seconds any one query may run (exports have their own).
    - ``max_concurrent_exports``: exports running at once in this process (beyond: 429);
      at most the pool's ``max_size`` minus one, so the query routes keep a connection.
    - ``export_timeout``: seconds an export may take in all; ``export_idle_timeout``:
      seconds it may wait for a client that does not read (the stream is cut and its
      transaction ends; the server also ends a transaction idle that long).
    - ``denial_window``, ``denial_budget``: refused requests are recorded once per client
      per window (with the count held back since), at most ``denial_budget`` per window.
    """
    if not isinstance(pool, AsyncConnectionPool):
        raise TypeError("admin_app() needs a psycopg_pool.AsyncConnectionPool")
    if authorize is not None and not callable(authorize):
        raise TypeError("authorize must be a callable taking the request")
    key = export_key or export_signing_key_from_env()
    codec = CursorCodec(cursor_secret_from(cursor_secret, key), cursor_ttl)
    # Exports never take the last connection: the query routes stay available.
    max_exports = max(1, min(max_concurrent_exports, (pool.max_size or 2) - 1))
    limits = _Limits(max_exports, export_timeout, export_idle_timeout, denial_window,
                     denial_budget)
    routes = _AdminRoutes(pool, authorize, codec, export_key, statement_timeout, limits)
    wrap = routes.endpoint

    async def not_found(request: Request, exc: Exception) -> Response:
        return _error(404, "not_found", "no such endpoint")

    async def not_allowed(request: Request, exc: Exception) -> Response:
        return JSONResponse({"error": "method_not_allowed", "message": "only GET is served"},
                            status_code=405, headers={"allow": "GET, HEAD"})

    return Starlette(
        routes=[
            *viewer_routes(routes, _failure, integrity_status),
            Route("/events", wrap(routes.events), methods=["GET"]),
            Route("/events/{id}", wrap(routes.event), methods=["GET"]),
            Route("/records/{table}/{record_id:path}", wrap(routes.history), methods=["GET"]),
            Route("/export", wrap(routes.export), methods=["GET"]),
            Route("/verify", wrap(routes.verify), methods=["GET"]),
            Route("/openapi.json", wrap(routes.openapi), methods=["GET"]),
        ],
        exception_handlers={404: not_found, 405: not_allowed},
    )
