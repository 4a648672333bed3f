"""The ``audit-mw`` command line.

Each command group lives in its own module and registers its sub-commands with
:func:`register`; :func:`main` wires them into one parser. Exit status: 0 success, 1 the
check failed (status not ok, verification found tampering), 2 the command could not run.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from audit_mw.cli import (
    _admin_cmds,
    _archive_cmds,
    _demo_cmds,
    _events_cmds,
    _integrity_cmds,
    _retention_cmds,
    _schema_cmds,
    _server_cmds,
    _stream_cmds,
)
from audit_mw.errors import AuditError

__all__ = ["main"]

# Each module exposes register(subparsers); order is the order of `audit-mw --help`.
COMMAND_MODULES = (
    _schema_cmds, _server_cmds, _events_cmds, _integrity_cmds, _admin_cmds, _retention_cmds,
    _archive_cmds, _stream_cmds, _demo_cmds,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="audit-mw",
        description="Tamper-evident audit trail for PostgreSQL web apps.",
    )
    parser.add_argument(
        "--dsn",
        help="PostgreSQL connection string (default: $DATABASE_URL, else the embedded server)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``audit-mw`` with ``argv``; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.handler(args)
    except AuditError as exc:
        print(f"audit-mw: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
