"""The ``audit-mw`` command line.

Each command group lives in its own module and registers its sub-commands with
:func:`register`; :func:`main` wires them into one parser. Exit status: 0 success, 1 the
check failed (status not ok, verification found tampering), 2 the command could not run.

Output: results on stdout (with ``--json``, exactly one JSON document), everything else on
stderr: warnings, structlog records (events the command writes, such as the audit events
of ``retention apply`` or ``hold add``), and errors. A user error (a bad argument, a
database that cannot be reached or refuses the command, a missing file) is one line,
``audit-mw: error: ...``, and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn, TextIO, cast

import psycopg
import psycopg_pool
import structlog

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


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2), like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"audit-mw: error: {self.prog}: {_one_line(message)} (see --help)\n")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (a test may swap it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def _records_to_stderr() -> Iterator[None]:
    """structlog's default prints to stdout, which belongs to the command's result: while
    the command runs, records go to stderr (unless the application configured structlog)."""
    if structlog.is_configured():
        yield
        return
    previous: dict[str, Any] = structlog.get_config()
    structlog.configure(logger_factory=lambda *_: structlog.PrintLogger(cast("TextIO", _Stderr())),
                        cache_logger_on_first_use=False)
    try:
        yield
    finally:
        structlog.reset_defaults()
        if previous != structlog.get_config():
            structlog.configure(**previous)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
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
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already reported in one line
        return exc.code if isinstance(exc.code, int) else 2
    try:
        with _records_to_stderr():
            status: int = args.handler(args)
    except (AuditError, psycopg.Error, psycopg_pool.PoolTimeout, OSError) as exc:
        # What the user can act on, in one line: never a traceback.
        message = _one_line(str(exc)) or type(exc).__name__
        if isinstance(exc, psycopg.Error):
            message = f"the database refused the command: {message}"
        print(f"audit-mw: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
