"""replay: store the application events kept in a durable spool while the database was down."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import structlog

from audit_mw.cli._connect import connect
from audit_mw.errors import ConfigurationError
from audit_mw.events import replay
from audit_mw.events.spool import Spool

#: Where `audit-mw replay` looks for the spool when --spool is not given.
SPOOL_ENV = "AUDIT_MW_SPOOL"


def register(commands: Any) -> None:
    p = commands.add_parser(
        "replay",
        help="store spooled application events (idempotent); exit 1 if any stay pending",
    )
    p.add_argument("--spool", metavar="PATH",
                   help=f"the spool file (default: ${SPOOL_ENV})")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_replay)


def cmd_replay(args: argparse.Namespace) -> int:
    path = args.spool or os.environ.get(SPOOL_ENV, "").strip()
    if not path:
        raise ConfigurationError(f"no spool given: pass --spool PATH or set ${SPOOL_ENV}")
    spool = Spool(path)
    if not structlog.is_configured():
        # Event records go to stderr, so that stdout holds only the report (--json).
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    with connect(args) as conn:
        conn.autocommit = True  # each batch runs in its own transaction
        result = replay(conn, spool)
    summary = {
        "spool": str(spool.path), "stored": result.stored, "duplicates": result.duplicates,
        "rejected": result.rejected, "pending": result.pending,
        "error": None if result.error is None else str(result.error).strip(),
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"replayed {spool.path}: {result.stored} stored, {result.duplicates} already"
              f" stored, {result.rejected} rejected, {result.pending} pending")
        if result.rejected:
            print(f"  rejected lines were moved to {spool.rejected_path}")
        if result.error is not None:
            print(f"  stopped: {summary['error']}")
    return 0 if result.pending == 0 and result.error is None else 1
