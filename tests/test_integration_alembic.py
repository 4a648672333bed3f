"""Alembic: a migration role tracks its own table; a later ADD COLUMN is captured."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.config import Config
from audit_mw_examples.fastapi_sqlalchemy.app import sqlalchemy_url
from psycopg import sql

from audit_mw.capture import install, track
from audit_mw.errors import TrackingError
from audit_mw.integrations.alembic import grant_migration_role
from tests.conftest import Cluster

pytestmark = pytest.mark.db

MIGRATOR = "audit_mw_test_migrator"

ENV = """
from alembic import context
from sqlalchemy import create_engine

engine = create_engine(context.config.get_main_option("sqlalchemy.url"))
try:
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=None)
        with context.begin_transaction():
            context.run_migrations()
finally:
    engine.dispose()  # also when a migration fails: no connection left to the collector
"""

FIRST = """
revision = "0001"
down_revision = None

import sqlalchemy as sa
from alembic import op
from audit_mw.integrations import alembic as audit_op


def upgrade():
    op.create_table("invoices", sa.Column("id", sa.Integer, primary_key=True),
                    sa.Column("amount", sa.Numeric, nullable=False),
                    sa.Column("card_token", sa.Text))
    audit_op.track("invoices", exclude=["card_token"])
"""

SECOND = """
revision = "0002"
down_revision = "0001"

import sqlalchemy as sa
from alembic import op


def upgrade():
    op.add_column("invoices", sa.Column("memo", sa.Text))
    op.execute("UPDATE invoices SET memo = 'backfilled'")
"""


def _alembic(tmp_path: Path, url: str, revisions: dict[str, str]) -> Config:
    (tmp_path / "versions").mkdir(exist_ok=True)
    (tmp_path / "env.py").write_text(ENV)
    for name, text in revisions.items():
        (tmp_path / "versions" / f"{name}.py").write_text(textwrap.dedent(text))
    config = Config()
    config.set_main_option("script_location", str(tmp_path))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


@pytest.fixture
def migrator_dsn(cluster: Cluster, database: str, dsn: str) -> str:
    with psycopg.connect(dsn, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [MIGRATOR]).fetchone():
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(MIGRATOR)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(
            sql.Identifier(MIGRATOR)))
    return cluster.dsn(database, user=MIGRATOR)


def test_a_migration_tracks_its_table_and_a_later_add_column_is_captured(
        dsn: str, migrator_dsn: str, tmp_path: Path) -> None:
    with psycopg.connect(dsn) as conn:
        grant_migration_role(conn, MIGRATOR)
    url = sqlalchemy_url(migrator_dsn).render_as_string(hide_password=False)
    command.upgrade(_alembic(tmp_path, url, {"0001": FIRST}), "head")
    with psycopg.connect(migrator_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO invoices (amount, card_token) VALUES (10, 'tok_secret')")
    command.upgrade(_alembic(tmp_path, url, {"0001": FIRST, "0002": SECOND}), "head")

    with psycopg.connect(dsn) as conn:
        rows: list[Any] = conn.execute(
            "SELECT action, new_values, db_role FROM audit.events"
            " WHERE kind = 'data' AND table_name = 'invoices' ORDER BY id").fetchall()
        tracked = conn.execute("SELECT excluded FROM audit.tracked_tables"
                               " WHERE table_name = 'invoices'").fetchone()
        owner = conn.execute("SELECT nspowner::regrole::text FROM pg_namespace"
                             " WHERE nspname = 'audit'").fetchone()
    assert [(r[0], r[2]) for r in rows] == [("INSERT", MIGRATOR), ("UPDATE", MIGRATOR)]
    assert "card_token" not in rows[0][1]
    assert rows[1][1]["memo"] == "backfilled"  # the column added by the later migration
    assert tracked == (["card_token"],)
    assert owner is not None
    assert owner[0] != MIGRATOR


def test_without_the_grants_tracking_is_refused(migrator_dsn: str, tmp_path: Path) -> None:
    url = sqlalchemy_url(migrator_dsn).render_as_string(hide_password=False)
    with pytest.raises(TrackingError, match="grant_migration_role"):
        command.upgrade(_alembic(tmp_path, url, {"0001": FIRST}), "head")
    with psycopg.connect(migrator_dsn) as conn:
        # The migration's transaction rolled back: no table without its triggers.
        assert conn.execute("SELECT to_regclass('invoices')").fetchone() == (None,)



def test_tracking_again_from_a_migration_is_refused_where_ddl_is_watched(
        dsn: str, migrator_dsn: str, tmp_path: Path) -> None:
    # Replacing a tracked table's capture triggers drops them first: where the event
    # triggers watch DDL (an install by a superuser), only a superuser or a member of
    # audit_owner may do that, so a migration role cannot change what is captured of a table
    # once it is tracked (here: start storing the excluded card_token).
    with psycopg.connect(dsn, autocommit=True) as conn:
        assert install(conn).ddl_watched
        grant_migration_role(conn, MIGRATOR)
    url = sqlalchemy_url(migrator_dsn).render_as_string(hide_password=False)
    command.upgrade(_alembic(tmp_path, url, {"0001": FIRST}), "head")
    with psycopg.connect(migrator_dsn) as conn, pytest.raises(
            TrackingError, match=r"capture trigger .* may not be dropped"):
        track(conn, "invoices")
    with psycopg.connect(dsn) as conn:
        tracked = conn.execute("SELECT excluded FROM audit.tracked_tables"
                               " WHERE table_name = 'invoices'").fetchone()
        triggers = conn.execute("SELECT count(*) FROM pg_trigger"
                                " WHERE tgrelid = 'invoices'::regclass"
                                " AND tgname LIKE 'audit_mw_%' AND tgenabled = 'A'").fetchone()
    assert tracked == (["card_token"],)
    assert triggers == (4,)
