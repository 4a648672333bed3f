"""A real PgBouncer in front of the test server, started and stopped by the tests.

The binary comes from the Debian package ``pgbouncer`` (``.ci/run`` installs it). Without
it the tests that need it skip with a visible reason, except under ``CI=true``, where they
fail: CI must run them.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest


def pgbouncer_binary() -> str:
    """The pgbouncer executable, or a skip (a failure under CI=true) when there is none."""
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found:
        return found
    reason = "the pgbouncer binary is not installed (Debian: apt-get install pgbouncer)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason}; CI must run the PgBouncer tests")
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> list[str]:
    # PgBouncer refuses to run as root; drop to an unprivileged account when we are root.
    if os.geteuid() != 0:
        return []
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return ["-u", name]
    pytest.fail("running as root, and neither a postgres nor a nobody account exists")


class PgBouncer:
    """A running PgBouncer; :meth:`dsn` points a server DSN at it instead."""

    def __init__(self, port: int) -> None:
        self.port = port

    def dsn(self, server_dsn: str) -> str:
        params = psycopg.conninfo.conninfo_to_dict(server_dsn)
        params.update(host="127.0.0.1", port=str(self.port))
        return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})


@contextmanager
def run_pgbouncer(
    server_dsn: str, users: Sequence[str], *, pool_mode: str = "transaction", pool_size: int = 1
) -> Iterator[PgBouncer]:
    """Start PgBouncer in front of the server of ``server_dsn``; stop it on exit.

    ``pool_size`` server connections per database and user: small, so that clients share.
    """
    binary = pgbouncer_binary()
    server = psycopg.conninfo.conninfo_to_dict(server_dsn)
    password = str(server.get("password", ""))
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="audit_mw_pgbouncer_"))
    # Readable by the unprivileged account PgBouncer switches to.
    folder.chmod(0o755)
    (folder / "users.txt").write_text(
        "".join(f'"{user}" "{password}"\n' for user in users), encoding="utf-8")
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={server.get("host", "127.0.0.1")} port={server.get("port", 5432)}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder / "users.txt"}
pool_mode = {pool_mode}
default_pool_size = {pool_size}
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
""",
        encoding="utf-8",
    )
    for path in folder.iterdir():
        path.chmod(0o644)
    # A file, not a pipe: nobody reads the log while the tests run, and a full pipe blocks.
    log = (folder / "pgbouncer.log").open("w", encoding="utf-8")
    process = subprocess.Popen(
        [binary, *_run_as(), str(folder / "pgbouncer.ini")],
        stdout=log, stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            if process.poll() is not None:
                output = (folder / "pgbouncer.log").read_text(encoding="utf-8")
                pytest.fail(f"pgbouncer exited with {process.returncode}:\n{output}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("pgbouncer did not start listening within 15 s")
                time.sleep(0.05)
        yield PgBouncer(port)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
