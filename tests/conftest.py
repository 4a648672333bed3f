"""Test harness: a real PostgreSQL for every database test.

- With ``DATABASE_URL`` set, that server is used (the role needs CREATEDB and CREATEROLE).
- Otherwise one embedded PostgreSQL server is started for the whole session.

A template database gets the audit schema once; each test that asks for ``dsn`` or ``conn``
gets a fresh database cloned from it. A test that needs a database and cannot get one fails:
nothing here skips.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from audit_mw.capture.schema import install
from audit_mw.testing.embedded import EmbeddedServer, resolve_dsn
from tests._pool import create_notes

#: A login role without privileges beyond what the tests grant: the "application".
APP_ROLE = "audit_mw_test_app"


class Cluster:
    """A PostgreSQL server the tests may create databases and roles on."""

    def __init__(self, admin_dsn: str, server: EmbeddedServer | None) -> None:
        self.admin_dsn = admin_dsn
        self.server = server

    def dsn(self, dbname: str, user: str | None = None) -> str:
        params = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
            params.pop("password", None)
        return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.admin_dsn, autocommit=True)

    def create_database(self, template: str | None = None) -> str:
        name = f"audit_mw_t_{uuid.uuid4().hex[:12]}"
        with self.admin() as conn:
            if template is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            else:
                conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY").format(
                    sql.Identifier(name), sql.Identifier(template)))
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    external = resolve_dsn()
    if external:
        yield Cluster(external, None)
        return
    # Not under pytest's tmp_path: pytest prunes old base temp folders when several runs
    # overlap, which would pull the data directory out from under a running server.
    server = EmbeddedServer(
        Path(tempfile.mkdtemp(prefix="audit_mw_test_pg_")) / "data",
        # Durability is not under test; speed is welcome.
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
                  "max_connections": "300"},
    )
    server.start()
    try:
        yield Cluster(server.dsn(), server)
    finally:
        server.destroy()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def template_db(cluster: Cluster) -> Iterator[str]:
    with cluster.admin() as conn:
        exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
    name = cluster.create_database()
    with psycopg.connect(cluster.dsn(name)) as conn:
        # DDL watching is tested on its own (tests/test_ddl_watch.py): the rest of the suite
        # counts events and would see its own ALTER TABLEs as DDL events.
        install(conn, writer_roles=[APP_ROLE], watch_ddl=False)
        # The application owns nothing in the audit schema, but may use its own tables.
        conn.execute(sql.SQL("GRANT ALL ON SCHEMA public TO {}").format(sql.Identifier(APP_ROLE)))
    try:
        yield name
    finally:
        cluster.drop_database(name)


@pytest.fixture
def database(cluster: Cluster, template_db: str) -> Iterator[str]:
    """The name of a fresh database with the audit schema installed."""
    name = cluster.create_database(template=template_db)
    try:
        yield name
    finally:
        cluster.drop_database(name)


@pytest.fixture
def dsn(cluster: Cluster, database: str) -> str:
    """A superuser DSN for a fresh database with the audit schema installed."""
    return cluster.dsn(database)


@pytest.fixture
def app_dsn(cluster: Cluster, database: str) -> str:
    """A DSN for the same database as ``dsn``, logged in as the unprivileged app role."""
    return cluster.dsn(database, user=APP_ROLE)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """A superuser connection (autocommit) to a fresh database with the schema installed."""
    with psycopg.connect(dsn, autocommit=True) as connection:
        yield connection


@pytest.fixture
def notes(conn: psycopg.Connection[tuple[object, ...]]) -> psycopg.Connection[tuple[object, ...]]:
    """``conn``, with the tracked ``notes`` table of the pool tests, writable by the app role."""
    create_notes(conn, grant_to="audit_mw_test_app")
    return conn


@pytest.fixture
def empty_dsn(cluster: Cluster) -> Iterator[str]:
    """A DSN for a fresh database without the audit schema."""
    name = cluster.create_database()
    try:
        yield cluster.dsn(name)
    finally:
        cluster.drop_database(name)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses the shared server ``db``, and every test that starts its own
    embedded server ``own_server``: ``pytest -m "db and not own_server"`` runs the tests that
    a server given by ``DATABASE_URL`` serves (CI runs them on each PostgreSQL version)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "cluster" in fixtures:
            item.add_marker(pytest.mark.db)
        if "server_dir" in fixtures:
            item.add_marker(pytest.mark.own_server)


def pytest_report_header(config: pytest.Config) -> str:
    source = "DATABASE_URL" if resolve_dsn() else "embedded PostgreSQL"
    return f"audit_mw database: {source}; CI={os.environ.get('CI', '')}"


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def server_dir() -> Iterator[Path]:
    """A folder for a test's own embedded server, outside pytest's prunable tmp_path."""
    folder = Path(tempfile.mkdtemp(prefix="audit_mw_test_"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
