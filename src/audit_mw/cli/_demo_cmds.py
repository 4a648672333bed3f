"""demo: the example shop on the embedded server, with traffic, a seal and a verification.

``audit-mw demo`` needs nothing configured: it starts the embedded PostgreSQL server, builds
a fresh ``audit_mw_demo`` database with the shop's tables tracked, serves the Starlette
example on 127.0.0.1, sends it some sample traffic, seals the trail and verifies it, and
prints the audit viewer's URL first, then the shop's and the demo credentials. Ctrl-C stops
the app, and the embedded server if the demo started it.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from audit_mw.cli._connect import embedded_server
from audit_mw.errors import ConfigurationError
from audit_mw.testing.embedded import DEFAULT_DATA_DIR, resolve_dsn

DEMO_DB = "audit_mw_demo"


def register(commands: Any) -> None:
    p = commands.add_parser(
        "demo", help="run the example shop with audited tables, login and the admin routes")
    p.add_argument("--port", type=int, default=8000, help="port on 127.0.0.1 (0: any free)")
    p.add_argument("--no-traffic", action="store_true", help="do not send sample traffic")
    p.add_argument("--once", action="store_true",
                   help="set up, send traffic, seal, verify, print, then exit")
    p.set_defaults(handler=cmd_demo)


def _prepare_database(args: argparse.Namespace) -> tuple[str, str, bool]:
    """The admin DSN, the shop's DSN, and whether the demo started the embedded server."""
    from audit_mw_examples.shop import setup_database  # noqa: PLC0415 - optional part

    explicit = getattr(args, "dsn", None) or resolve_dsn()
    if explicit:
        # Someone else's database: set up in place, no roles created, nothing dropped.
        return str(explicit), setup_database(str(explicit), app_role=None), False
    server = embedded_server()
    started = not server.is_running()
    server.start()
    with psycopg.connect(server.dsn(), autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(DEMO_DB)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(DEMO_DB)))
    admin_dsn = server.dsn(DEMO_DB)
    return admin_dsn, setup_database(admin_dsn), started


def _demo_keys(home: Path) -> None:
    """A checkpoint key and an export key for the demo, unless configured; never for
    production."""
    from audit_mw.integrity import generate_hmac_key  # noqa: PLC0415

    if not os.environ.get("AUDIT_HMAC_KEY"):
        key_file = home / "demo-hmac-key"
        if not key_file.exists():
            home.mkdir(parents=True, exist_ok=True)
            key_file.write_text(generate_hmac_key("demo1"))
            key_file.chmod(0o600)
        os.environ["AUDIT_HMAC_KEY"] = key_file.read_text().strip()
    if not os.environ.get("AUDIT_EXPORT_KEY"):
        from audit_mw.integrity.keys import generate_signing_key  # noqa: PLC0415

        export_file = home / "demo-export-key"
        if not export_file.exists():
            home.mkdir(parents=True, exist_ok=True)
            export_file.write_text(generate_signing_key()[0])
            export_file.chmod(0o600)
        os.environ["AUDIT_EXPORT_KEY"] = export_file.read_text().strip()


def _seal_and_verify(dsn: str, checkpoint_file: Path) -> tuple[str, str]:
    """Seal as the schema owner (the app's role may not), then verify against the file."""
    from audit_mw.integrity import JsonlSink, seal, verify  # noqa: PLC0415

    checkpoint_file.unlink(missing_ok=True)  # the demo database is new every time
    with psycopg.connect(dsn, autocommit=True) as conn:
        sealed = seal(conn, sinks=[JsonlSink(checkpoint_file)])
        # Recorded, so that the viewer's integrity page shows this run.
        result = verify(conn, checkpoint_file=checkpoint_file, record=True)
    return (f"sealed {sealed.sealed} entries", f"{result.detail} "
            f"({result.checked} checked, {result.unsealed} not sealed yet)")


def _quiet_logs() -> None:
    """Keep the terminal for the demo's own output: audit events are in the database."""
    import logging  # noqa: PLC0415

    import structlog  # noqa: PLC0415

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))


def _serve(app: Any, port: int) -> tuple[Any, threading.Thread, str]:
    import uvicorn  # noqa: PLC0415 - a demo dependency

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on 127.0.0.1:{port} ({exc.strerror}); "
                                 "pass --port with a free port, or --port 0") from None
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
        if not thread.is_alive():
            raise ConfigurationError("the demo app did not start")
    return server, thread, f"http://127.0.0.1:{sock.getsockname()[1]}"


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        from audit_mw_examples.shop import DEMO_USERS  # noqa: PLC0415
        from audit_mw_examples.starlette_app.app import create_app  # noqa: PLC0415
        from audit_mw_examples.traffic import send_sample_traffic  # noqa: PLC0415
    except ImportError as exc:
        raise ConfigurationError(
            f"the demo needs the example apps and their extras ({exc.name} is missing); "
            "install with: pip install 'audit-mw[demo]'") from None

    home = DEFAULT_DATA_DIR.parent
    print("audit-mw demo: preparing the database ...", file=sys.stderr, flush=True)
    admin_dsn, shop_dsn, started_server = _prepare_database(args)
    _quiet_logs()
    _demo_keys(home)
    server, thread, url = _serve(create_app(shop_dsn), args.port)
    try:
        if not args.no_traffic:
            print("audit-mw demo: sending sample traffic ...", file=sys.stderr, flush=True)
            send_sample_traffic(url)
        sealed, verified = _seal_and_verify(admin_dsn, home / "demo-checkpoints.jsonl")
        admin, member = DEMO_USERS[0], DEMO_USERS[1]
        print(f"""
Audit viewer: {url}/audit/ui/   (log in at {url}/login as the admin below)

The example shop is running at {url}  (database: {shop_dsn})

  admin:   {admin.email} / {admin.password}
  member:  {member.email} / {member.password}

Integrity: {sealed}; verification {verified}

Try it:
  curl -s -c /tmp/audit-mw-demo.jar -H 'content-type: application/json' \\
       -d '{{"email": "{admin.email}", "password": "{admin.password}"}}' {url}/login
  curl -s -b /tmp/audit-mw-demo.jar '{url}/audit/events?limit=5'
  curl -s -b /tmp/audit-mw-demo.jar '{url}/audit/records/orders/1'
  curl -s -b /tmp/audit-mw-demo.jar '{url}/audit/verify'

Admin routes: {url}/audit/openapi.json   Press Ctrl-C to stop.""", flush=True)
        if not args.once:
            while thread.is_alive():
                thread.join(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.should_exit = True
        thread.join(10)
        if started_server:
            embedded_server().stop()
        print("audit-mw demo: stopped", file=sys.stderr, flush=True)
    return 0
