"""The audit viewer: HTML pages over the admin routes, for people who would rather look.

Served by the admin app under ``/ui/`` (so at ``/audit/ui/`` when the app is mounted at
``/audit``): events with filters kept in the URL, one record's history with the changed
fields highlighted, failed logins by account and by address over time, the integrity
position, and an export form. The pages use the same query layer as the JSON routes
(:mod:`audit_mw.admin.query`: one set of filters, one validation), the same ``authorize``
callable, and record every page view as an access event, as the API does.

Everything shown comes from the trail, and the trail holds what users typed: templates are
autoescaped without exception, every response carries a Content-Security-Policy that allows
no script at all and styles only from the package's own stylesheet, and the pages cannot be
framed. Every route is a ``GET`` that changes nothing but the access log. Links are built
from the request's ``root_path``, so the viewer works at any mount path, including behind
the WSGI adapter.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Route

from audit_mw import _sql
from audit_mw.admin._access import TrailAccessAction
from audit_mw.admin.export import export_signing_key_from_env
from audit_mw.admin.query import (
    COUNT_CAP,
    DEFAULT_LIMIT,
    EVENT_FILTERS,
    KINDS,
    MAX_LIMIT,
    filters_digest,
    parse_event_query,
    parse_history_query,
    parse_timestamp,
    where_clause,
)
from audit_mw.errors import QueryError

if TYPE_CHECKING:
    from audit_mw.admin.app import _AdminRoutes

__all__ = ["PREFIX", "SECURITY_HEADERS", "viewer_routes"]

#: Where the pages live inside the admin app.
PREFIX: Final = "/ui"

#: Sent with every page. No script may run at all; styles and images come from the package.
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}

#: Values the capture triggers and the redactor store in place of a hidden value.
HIDDEN_VALUES: Final = {"[masked]": "masked", "[redacted]": "redacted"}
LIMIT_CHOICES: Final = (25, 50, 100, 200)
#: The longest range the logins page groups; its buckets stay a few dozen bars.
MAX_LOGIN_RANGE: Final = timedelta(days=400)
#: Rows of (account, address, bucket) read for the logins page at most.
LOGIN_ROWS_CAP: Final = 20_000
TOP_GROUPS: Final = 20

Page = Callable[[Request], Awaitable[Response]]


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("audit_mw.admin", "templates"),
        autoescape=True,  # every template, whatever its name: trail values are hostile
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["shown"] = _shown
    env.tests["hidden"] = lambda value: isinstance(value, str) and value in HIDDEN_VALUES
    return env


def _when(value: Any) -> str:
    """An ISO timestamp from the trail as ``2024-03-04 10:22:01 UTC``."""
    if not value:
        return ""
    try:
        moment = datetime.fromisoformat(str(value)).astimezone(UTC)
    except ValueError:
        return str(value)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _shown(value: Any) -> str:
    """A JSON value as text: strings as they are, everything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "), sort_keys=True)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Links:
    """URLs of the viewer's pages, below the app's mount point (``root_path``)."""

    root: str

    def page(self, path: str, params: Mapping[str, Any] | Iterable[tuple[str, Any]] = ()
             ) -> str:
        """``path`` below the mount point, with the non-empty ``params`` as a query."""
        pairs = params.items() if isinstance(params, Mapping) else params
        query = urlencode([(k, str(v)) for k, v in pairs if v not in (None, "")])
        return f"{self.root}{path}" + (f"?{query}" if query else "")

    def events(self, **params: Any) -> str:
        """The events page with these filters."""
        return self.page(f"{PREFIX}/", params)

    def record(self, table: str | None, record_id: str | None,
               schema: str | None = None, cursor: str | None = None) -> str:
        """One record's history (empty when the event names no record)."""
        if not table or not record_id:
            return ""
        path = f"{PREFIX}/records/{quote(table, safe='')}/{quote(record_id, safe='')}"
        return self.page(path, {"schema": schema, "cursor": cursor})


def _changes(event: Mapping[str, Any]) -> tuple[list[str], set[str]]:
    """Every field of the row image, in order, and the names of those that changed."""
    old = event.get("old_values") or {}
    new = event.get("new_values") or {}
    names = list(dict.fromkeys([*old, *new]))
    action = event.get("action")
    if action in ("INSERT", "DELETE"):
        return names, set(names)
    if action == "UPDATE":
        changed = event.get("changed_fields") or [
            k for k in names if old.get(k) != new.get(k)]
        return names, set(changed)
    return names, set()


def _bars(values: Sequence[int], width: float, height: float) -> list[dict[str, float]]:
    """Bar geometry for a small SVG chart: one bar per value, scaled to the largest."""
    if not values:
        return []
    top = max(*values, 1)
    step = width / len(values)
    gap = min(2.0, step * 0.2)
    bars = []
    for index, value in enumerate(values):
        tall = 0.0 if value == 0 else max(1.0, height * value / top)
        bars.append({"x": round(index * step + gap / 2, 2), "y": round(height - tall, 2),
                     "width": round(max(step - gap, 0.5), 2), "height": round(tall, 2),
                     "value": value})
    return bars


def _bucket_size(span: timedelta) -> tuple[timedelta, str]:
    # Hours up to a week, so that a burst of failures stands out from a quiet day.
    if span <= timedelta(days=8):
        return timedelta(hours=1), "hour"
    if span <= timedelta(days=93):
        return timedelta(days=1), "day"
    return timedelta(days=7), "week"


class _Viewer:
    """The pages, sharing the admin routes' configuration, pool and access recording."""

    def __init__(self, admin: _AdminRoutes, failure: Callable[[Exception], Response],
                 integrity_status: Callable[[Any], Awaitable[dict[str, Any]]]) -> None:
        self.admin = admin
        self.failure = failure
        self.integrity_status = integrity_status
        self.env = _environment()
        self.css = (resources.files("audit_mw.admin") / "static" / "viewer.css").read_bytes()

    # -- plumbing ---------------------------------------------------------------------

    def render(self, request: Request, template: str, status: int = 200,
               **context: Any) -> HTMLResponse:
        links = Links(request.scope.get("root_path") or "")
        html = self.env.get_template(template).render(
            links=links, css=links.page(f"{PREFIX}/static/viewer.css"), prefix=PREFIX,
            current=template.removesuffix(".html"), **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def page(self, handler: Page) -> Page:
        """Authorise, run ``handler``, and answer every failure with an HTML page."""

        async def run(request: Request) -> Response:
            refused = await self.admin._allowed(request)
            if refused is not None:
                # The same refusal as the API (recorded there), but nothing of the trail.
                return self.render(request, "refused.html", status=refused.status_code,
                                   title="Not authorised")
            try:
                return await handler(request)
            except QueryError as exc:
                return self.render(request, "error.html", status=400, title="Bad request",
                                   message=f"{exc.parameter}: {exc.message}")
            except Exception as exc:  # every failure becomes a page; see app._failure
                answer = self.failure(exc)  # logs it, and says what may be said
                message = json.loads(bytes(answer.body)).get("message", "internal error")
                return self.render(request, "error.html", status=answer.status_code,
                                   title="The audit trail cannot be shown", message=message)

        return run

    async def _record(self, request: Request, endpoint: str, filters: Mapping[str, Any],
                      rows: int, **extra: Any) -> None:
        await self.admin._record(request, TrailAccessAction.QUERIED, metadata={
            "endpoint": f"ui/{endpoint}", "filters": dict(filters), "rows": rows, **extra})

    # -- pages ------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        # A submitted form sends every field; an empty one means "no filter".
        items = [(k, v) for k, v in request.query_params.multi_items() if v != ""]
        form = {k: v for k, v in items if k in EVENT_FILTERS or k == "limit"}
        limits = set(LIMIT_CHOICES)
        asked = form.get("limit", "")
        if asked.isascii() and asked.isdigit() and 0 < int(asked) <= MAX_LIMIT:
            limits.add(int(asked))  # a pasted link's page size stays selected
        context: dict[str, Any] = {
            "title": "Events", "form": form, "kinds": KINDS, "limits": sorted(limits),
            "default_limit": DEFAULT_LIMIT, "events": [], "error": None, "total": None,
            "total_exact": True, "next_link": None, "first_link": None, "page_number": 1,
        }
        try:
            query = parse_event_query(items, self.admin.codec)
        except QueryError as exc:
            context["error"] = exc
            return self.render(request, "events.html", status=400, **context)
        where, params = where_clause(query.filters, before_id=query.before_id)
        count_where, count_params = where_clause(query.filters)
        async with self.admin._reading() as conn:
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
        await self._record(request, "events", query.described_filters(), len(page_rows),
                           page=query.page, limit=query.limit,
                           cursor=query.before_id is not None)
        links = Links(request.scope.get("root_path") or "")
        kept = [(k, v) for k, v in items if k not in ("page", "cursor")]
        if len(rows) > query.limit:
            cursor = self.admin.codec.encode(filters_digest("events", query.filters),
                                             int(page_rows[-1][0]), query.page + 1)
            context["next_link"] = links.page(f"{PREFIX}/", [*kept, ("cursor", cursor)])
        if query.page > 1:
            context["first_link"] = links.page(f"{PREFIX}/", kept)
        context.update(
            events=[json.loads(text) for _, text in page_rows], total=min(matches, COUNT_CAP),
            total_exact=matches <= COUNT_CAP, page_number=query.page, limit=query.limit)
        return self.render(request, "events.html", **context)

    async def record(self, request: Request) -> Response:
        table = request.path_params.get("table")
        record_id = request.path_params.get("record_id")
        items = request.query_params.multi_items()
        if table is None:  # the form: /ui/records?table=&record_id=
            given = {k: v for k, v in items if v != ""}
            table, record_id = given.pop("table", None), given.pop("record_id", None)
            items = list(given.items())
            if not table or not record_id:
                await self._record(request, "records", {}, 0)
                return self.render(request, "record.html", title="Record history",
                                   query=None, steps=[], next_link=None, form={
                                       "table": table or "", "record_id": record_id or ""})
        query = parse_history_query(table, str(record_id), items, self.admin.codec)
        async with self.admin._reading() as conn:
            rows = await (await conn.execute(_sql.query("admin", "record_history"), {
                "table": query.table, "record_id": query.record_id, "schema": query.schema,
                "after_id": query.after_id or 0, "limit": query.limit + 1,
            })).fetchall()
        page_rows = rows[: query.limit]
        steps = []
        for _, text in page_rows:
            event = json.loads(text)
            fields, changed = _changes(event)
            steps.append({"event": event, "fields": fields, "changed": changed,
                          "old": event.get("old_values") or {},
                          "new": event.get("new_values") or {}})
        await self._record(request, "records", query.filters, len(steps), page=query.page,
                           limit=query.limit)
        links = Links(request.scope.get("root_path") or "")
        next_link = None
        if len(rows) > query.limit:
            cursor = self.admin.codec.encode(filters_digest("records", query.filters),
                                             int(page_rows[-1][0]), query.page + 1)
            next_link = links.record(query.table, query.record_id, query.schema, cursor)
        return self.render(request, "record.html", title=f"History of {query.table} "
                           f"{query.record_id}", query=query, steps=steps, next_link=next_link,
                           form={"table": query.table, "record_id": query.record_id})

    async def logins(self, request: Request) -> Response:
        values: dict[str, str] = {}
        for name, value in request.query_params.multi_items():
            if name not in ("from", "to"):
                raise QueryError(name[:40], "unknown parameter; expected one of from, to")
            if name in values:
                raise QueryError(name, "given more than once")
            if value:
                values[name] = value
        now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
        end = parse_timestamp("to", values["to"]) if "to" in values else now
        start = (parse_timestamp("from", values["from"]) if "from" in values
                 else end - timedelta(days=7))
        if start >= end:
            raise QueryError("from", "must be before to")
        if end - start > MAX_LOGIN_RANGE:
            raise QueryError("from", f"the range must be at most {MAX_LOGIN_RANGE.days} days")
        size, unit = _bucket_size(end - start)
        origin = start.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
        if unit != "hour":
            origin = origin.replace(hour=0)
        count = int((end - origin) / size) + 1
        buckets = [origin + size * i for i in range(count)]
        params = {"start": start, "end": end, "bucket": size, "origin": origin,
                  "cap": LOGIN_ROWS_CAP + 1}
        async with self.admin._reading() as conn:
            totals = await (await conn.execute(_sql.query("viewer", "login_buckets"),
                                               params)).fetchall()
            failures = await (await conn.execute(_sql.query("viewer", "login_failures"),
                                                 params)).fetchall()
        partial = len(failures) > LOGIN_ROWS_CAP
        failures = failures[:LOGIN_ROWS_CAP]
        index = {bucket: i for i, bucket in enumerate(buckets)}
        failed = [0] * count
        succeeded = [0] * count
        for bucket, n_failed, n_ok in totals:
            i = index.get(bucket.astimezone(UTC))
            if i is not None:
                failed[i], succeeded[i] = int(n_failed), int(n_ok)
        accounts = _groups(failures, key=0, other=1, index=index, count=count,
                           other_name="addresses")
        addresses = _groups(failures, key=1, other=0, index=index, count=count,
                            other_name="accounts")
        await self._record(request, "logins", {"from": start.isoformat(),
                                               "to": end.isoformat()}, len(failures))
        height = 120.0
        return self.render(
            request, "logins.html", title="Logins",
            form={"from": _iso(start), "to": _iso(end)}, unit=unit,
            chart={"width": 600.0, "height": height,
                   "failed": _bars(failed, 600.0, height),
                   "succeeded": _bars(succeeded, 600.0, height),
                   "top": max([*failed, *succeeded, 0])},
            series=[{"bucket": b, "failed": f, "succeeded": s}
                    for b, f, s in zip(buckets, failed, succeeded, strict=True) if f or s],
            first_bucket=buckets[0], last_bucket=buckets[-1],
            accounts=accounts, addresses=addresses, partial=partial, cap=LOGIN_ROWS_CAP,
            total_failed=sum(failed), total_succeeded=sum(succeeded),
            start=_iso(start), end=_iso(end))

    async def integrity(self, request: Request) -> Response:
        if request.query_params:
            raise QueryError(next(iter(request.query_params))[:40],
                             "unknown parameter; this page takes no parameters")
        async with self.admin._reading() as conn:
            status = await self.integrity_status(conn)
        await self._record(request, "integrity", {}, 0)
        run = status.get("last_verification")
        verdict = _verdict(run)
        return self.render(request, "integrity.html", title="Integrity", trail=status,
                           run=run, verdict=verdict)

    async def export(self, request: Request) -> Response:
        given = {k: v for k, v in request.query_params.multi_items() if v != ""}
        for name in given:
            if name not in ("from", "to", "format"):
                raise QueryError(name[:40], "unknown parameter; expected one of from, to, "
                                 "format")
        await self._record(request, "export", {}, 0)
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        form = {"from": given.get("from", _iso(today - timedelta(days=30))),
                "to": given.get("to", _iso(today + timedelta(days=1))),
                "format": given.get("format", "ndjson")}
        has_key = (self.admin.export_key or export_signing_key_from_env()) is not None
        return self.render(request, "export.html", title="Export", form=form,
                           has_key=has_key, formats=("ndjson", "csv"))

    async def stylesheet(self, request: Request) -> Response:
        # The package's own stylesheet, the same for everyone: nothing of the trail.
        return Response(self.css, media_type="text/css", headers={
            **SECURITY_HEADERS, "cache-control": "public, max-age=3600"})


def _verdict(run: Mapping[str, Any] | None) -> dict[str, str]:
    """The badge of the last verification: only ``valid`` (anchored) is ever green."""
    if run is None:
        return {"tone": "unknown", "label": "no verification recorded"}
    status = str(run.get("status"))
    if status == "valid":
        return {"tone": "good", "label": "valid, anchored"}
    if status == "valid_unanchored":
        return {"tone": "warn", "label": "valid, unanchored"}
    if status == "tampered":
        return {"tone": "bad", "label": "tampered"}
    return {"tone": "bad", "label": status.replace("_", " ")}


def _groups(rows: Sequence[Sequence[Any]], *, key: int, other: int,
            index: Mapping[datetime, int], count: int, other_name: str) -> list[dict[str, Any]]:
    """Failures per account (or per address): total, spread, first and last, bars."""
    groups: dict[Any, dict[str, Any]] = {}
    for row in rows:
        name = row[key]
        group = groups.setdefault(name, {"name": name, "failures": 0, "others": set(),
                                         "series": [0] * count, "first": None, "last": None})
        n = int(row[3])
        group["failures"] += n
        if row[other] is not None:
            group["others"].add(row[other])
        bucket = row[2].astimezone(UTC)
        i = index.get(bucket)
        if i is not None:
            group["series"][i] += n
        first, last = row[4].astimezone(UTC), row[5].astimezone(UTC)
        group["first"] = first if group["first"] is None else min(group["first"], first)
        group["last"] = last if group["last"] is None else max(group["last"], last)
    top = sorted(groups.values(), key=lambda g: (-g["failures"], str(g["name"])))[:TOP_GROUPS]
    for group in top:
        group[other_name] = len(group.pop("others"))
        group["bars"] = _bars(group.pop("series"), 160.0, 24.0)
    return top


def viewer_routes(
    admin: _AdminRoutes,
    failure: Callable[[Exception], Response],
    integrity_status: Callable[[Any], Awaitable[dict[str, Any]]],
) -> list[BaseRoute]:
    """The viewer's routes, to add to the admin app (every one a ``GET``)."""
    viewer = _Viewer(admin, failure, integrity_status)
    page = viewer.page
    return [
        Route(f"{PREFIX}/", page(viewer.events), methods=["GET"]),
        Route(f"{PREFIX}/records", page(viewer.record), methods=["GET"]),
        Route(f"{PREFIX}/records/{{table}}/{{record_id:path}}", page(viewer.record),
              methods=["GET"]),
        Route(f"{PREFIX}/logins", page(viewer.logins), methods=["GET"]),
        Route(f"{PREFIX}/integrity", page(viewer.integrity), methods=["GET"]),
        Route(f"{PREFIX}/export", page(viewer.export), methods=["GET"]),
        Route(f"{PREFIX}/static/viewer.css", viewer.stylesheet, methods=["GET"]),
    ]

