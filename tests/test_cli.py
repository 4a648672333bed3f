"""The audit-mw command line, against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_mw.cli import main
from tests._db import audit_rows


def test_install_track_status_untrack(empty_dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", empty_dsn, "install"]) == 0
    assert "installed audit schema version" in capsys.readouterr().out
    assert main(["--dsn", empty_dsn, "install"]) == 0
    assert "is current" in capsys.readouterr().out

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text, password_hash text,"
                     " ssn text)")
        conn.execute("CREATE TABLE orders (id int PRIMARY KEY, total numeric)")
    assert main(["--dsn", empty_dsn, "track", "users", "orders",
                 "--exclude", "users.password_hash", "--mask", "users.ssn"]) == 0
    out = capsys.readouterr().out
    assert "tracking public.users (key: id); excluding password_hash; masking ssn" in out
    assert "tracking public.orders (key: id)" in out

    assert main(["--dsn", empty_dsn, "status", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    assert [t["table"] for t in report["tables"]] == ["public.orders", "public.users"]

    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("INSERT INTO users VALUES (1, 'a@x', 'HASH', '123')")
        (row,) = audit_rows(conn, "users")
        assert "password_hash" not in row["new_values"]
        conn.execute("ALTER TABLE orders DISABLE TRIGGER audit_mw_insert")
    assert main(["--dsn", empty_dsn, "status"]) == 1
    out = capsys.readouterr().out
    assert "public.orders: PROBLEM: trigger audit_mw_insert is disabled" in out
    assert "status: NOT OK" in out

    assert main(["--dsn", empty_dsn, "untrack", "orders"]) == 0
    assert main(["--dsn", empty_dsn, "status"]) == 0


@pytest.mark.parametrize(("argv", "message"), [
    (["track", "users", "--exclude", "password_hash"], "expected TABLE.COLUMN"),
    (["track", "users", "--exclude", "orders.x"], "not being tracked: orders"),
    (["track", "nosuch"], "does not exist"),
    (["untrack", "users"], "is not tracked"),
])
def test_errors_are_reported_with_exit_status_2(
    dsn: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, password_hash text)")
    assert main(["--dsn", dsn, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("audit-mw: error: ")
    assert message in err


def test_unreachable_database_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--dsn", "host=127.0.0.1 port=1 dbname=x connect_timeout=2", "status"]) == 2
    assert "cannot connect to the database" in capsys.readouterr().err


def test_quick_start_on_the_embedded_server(server_dir: Path) -> None:
    """The README's first command path: no DATABASE_URL, the CLI starts its own server."""
    env: dict[str, Any] = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["AUDIT_MW_HOME"] = str(server_dir)
    cli = [sys.executable, "-m", "audit_mw.cli"]
    try:
        install = subprocess.run([*cli, "install"], env=env, capture_output=True, text=True,
                                 timeout=120, check=False)
        assert install.returncode == 0, install.stderr
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True,
                                timeout=120, check=False)
        assert status.returncode == 0, status.stderr
        assert "status: ok" in status.stdout
        url = subprocess.run([*cli, "server", "url"], env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        with psycopg.connect(url.stdout.strip()) as conn:
            assert conn.execute("SELECT version FROM audit.schema_migrations").fetchall()
    finally:
        subprocess.run([*cli, "server", "stop"], env=env, capture_output=True, timeout=120,
                       check=False)
