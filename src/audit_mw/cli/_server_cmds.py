"""server start|stop|url: the embedded PostgreSQL server the CLI uses without DATABASE_URL."""

from __future__ import annotations

import argparse
from typing import Any

from audit_mw.cli._connect import EMBEDDED_DBNAME, embedded_dsn, embedded_server


def register(commands: Any) -> None:
    p = commands.add_parser("server", help="manage the embedded PostgreSQL server")
    p.add_argument("action", choices=["start", "stop", "url"],
                   help="start it (and print its DSN), stop it, or print its DSN")
    p.set_defaults(handler=cmd_server)


def cmd_server(args: argparse.Namespace) -> int:
    server = embedded_server()
    if args.action == "start":
        print(embedded_dsn())
        return 0
    if args.action == "stop":
        server.stop()
        print("embedded server stopped")
        return 0
    if not server.is_running():
        print("embedded server is not running; start it with `audit-mw server start`")
        return 1
    server.start()  # reads the running server's port
    print(server.dsn(EMBEDDED_DBNAME))
    return 0
