"""Property-based run of the admin API against its own OpenAPI document (schemathesis).

A real HTTP server (uvicorn, in a thread) serves the admin app on a database of its own;
schemathesis generates valid and invalid requests for every operation and checks each
response: no server error, a documented status code, content type and body schema, and
invalid input rejected. Examples are bounded so the run stays short.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from psycopg_pool import AsyncConnectionPool
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount

from audit_mw.admin import admin_app
from tests._admin import ADMIN_ROLE, KEY, SECRET, allow, generate_events, insert_events
from tests.conftest import Cluster

pytestmark = [pytest.mark.db, pytest.mark.slow]

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance, negative_data_rejection]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def admin_server(cluster: Cluster, template_db: str) -> Iterator[str]:
    database = cluster.create_database(template=template_db)
    try:
        with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
            conn.execute(f"DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = "
                         f"'{ADMIN_ROLE}') THEN CREATE ROLE {ADMIN_ROLE} LOGIN; END IF; END $$")
            conn.execute(f"GRANT audit_reader, audit_writer TO {ADMIN_ROLE}")
            generate_events(conn, 300)
            insert_events(conn, [{"kind": "auth", "action": "login_failed", "success": False,
                                  "app_user_id": "=cmd", "reason": "bad password"}])
        pool = AsyncConnectionPool(cluster.dsn(database, user=ADMIN_ROLE), min_size=1,
                                   max_size=4, open=False)

        @asynccontextmanager
        async def lifespan(app: Starlette) -> AsyncIterator[None]:
            await pool.open()
            try:
                yield
            finally:
                await pool.close()

        async def host_not_found(request: Request, exc: Exception) -> Response:
            # A path the mount itself does not match (a raw newline in it) never reaches
            # the admin app; the host answers, in the admin API's error format.
            return JSONResponse({"error": "not_found", "message": "no such endpoint"}, 404)

        app = Starlette(routes=[Mount("/audit", admin_app(
            pool, authorize=allow, export_key=KEY, cursor_secret=SECRET))], lifespan=lifespan,
            exception_handlers={404: host_not_found})
        port = _free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                               log_level="warning", lifespan="on"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.05)
        try:
            yield f"http://127.0.0.1:{port}/audit"
        finally:
            server.should_exit = True
            thread.join(timeout=10)
    finally:
        cluster.drop_database(database)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_admin_api_matches_its_openapi_document(admin_server: str, mode: Any) -> None:
    schema = schemathesis.openapi.from_url(f"{admin_server}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    seen: dict[str, set[int]] = {}
    # schemathesis leaves out the document's own path.
    assert len(operations) == 5
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not operation.path_parameters \
                and not operation.query:
            continue  # nothing to get wrong (GET /verify takes no input)
        # Hypothesis drives the examples; schemathesis' own pytest integration is not used.
        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=25, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def check(case: Any) -> None:
            response = case.call_and_validate(checks=CHECKS)
            seen.setdefault(case.operation.label, set()).add(response.status_code)

        check()
    # The run reached every operation, and valid input was served, invalid input refused.
    expected = 200 if mode is GenerationMode.POSITIVE else 400
    assert all(expected in codes for codes in seen.values()), seen
    assert len(seen) == (5 if mode is GenerationMode.POSITIVE else 4)
