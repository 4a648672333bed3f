"""How every command finds its database: --dsn, then $DATABASE_URL, then the embedded server."""

from __future__ import annotations

import argparse

import psycopg

from audit_mw.errors import ConfigurationError
from audit_mw.testing.embedded import EmbeddedServer, resolve_dsn

#: The database the CLI uses on the embedded server.
EMBEDDED_DBNAME = "audit_mw"


def embedded_server() -> EmbeddedServer:
    """The CLI's own embedded server (kept in ``$AUDIT_MW_HOME``, default ``~/.audit_mw``)."""
    return EmbeddedServer()


def dsn_for(args: argparse.Namespace) -> str:
    """The DSN a command should use, starting the embedded server when none is configured."""
    explicit = getattr(args, "dsn", None) or resolve_dsn()
    if explicit:
        return str(explicit)
    return embedded_dsn()


def embedded_dsn() -> str:
    """Start the CLI's embedded server if needed, create its database, return its DSN."""
    server = embedded_server().start()
    with psycopg.connect(server.dsn(), autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", [EMBEDDED_DBNAME]
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{EMBEDDED_DBNAME}"')  # constant name
    return server.dsn(EMBEDDED_DBNAME)


def connect(args: argparse.Namespace) -> psycopg.Connection[tuple[object, ...]]:
    """Open a connection for a command, with a clear error when the database is unreachable."""
    dsn = dsn_for(args)
    try:
        return psycopg.connect(dsn, application_name="audit-mw")
    except psycopg.OperationalError as exc:
        raise ConfigurationError(f"cannot connect to the database: {exc}".strip()) from None
