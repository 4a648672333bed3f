"""The PostgreSQL server and the machine the database benchmarks run on.

Each database benchmark starts its own embedded server in a temporary folder, so a run never
touches the developer's or the test suite's server, and its settings are known and reported.
"""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from audit_mw.testing.embedded import EmbeddedServer, bin_dir, resolve_dsn, server_bin_dir

#: The server binaries the benchmarks start: the embedded 18 unless :func:`use_server` chose
#: another version (``--pg N``).
_binaries: Path | None = None


def use_server(major: int | None) -> Path:
    """Run the database benchmarks on PostgreSQL ``major`` (None: the embedded 18)."""
    global _binaries  # noqa: PLW0603 - one choice per benchmark run, made by its CLI
    _binaries = server_bin_dir(major)
    return _binaries


def binaries() -> Path:
    """The folder of the server binaries in use (``postgres``, ``pgbench``, ``pg_waldump``)."""
    return _binaries if _binaries is not None else bin_dir()

#: Server settings for the benchmarks. Checkpoints and autovacuum are kept out of the measured
#: windows (the benchmarks checkpoint and vacuum between runs themselves); JIT is off so that
#: 100k-row statements do not pay a compile that depends on cost estimates.
SETTINGS: dict[str, str] = {
    "shared_buffers": "1GB",
    "max_wal_size": "20GB",
    "checkpoint_timeout": "1h",
    "autovacuum": "off",
    "jit": "off",
    "track_functions": "all",
    "max_connections": "50",
}

#: The settings reported with the results (what a reader needs to compare runs).
REPORTED = (
    "server_version", "shared_buffers", "max_wal_size", "checkpoint_timeout", "autovacuum",
    "jit", "fsync", "full_page_writes", "wal_level", "wal_compression", "huge_pages",
    "track_functions",
)


@contextlib.contextmanager
def bench_server(settings: dict[str, str] | None = None) -> Iterator[EmbeddedServer]:
    """A fresh embedded server in a temporary folder, destroyed afterwards."""
    with tempfile.TemporaryDirectory(prefix="audit_mw_bench_") as folder:
        server = EmbeddedServer(Path(folder) / "data", settings={**SETTINGS, **(settings or {})},
                                bin_dir=binaries())
        server.start()
        try:
            yield server
        finally:
            server.destroy()


def server_settings(conn: Any) -> dict[str, str]:
    """The reported settings as the running server sees them."""
    rows = conn.execute(
        "SELECT name, current_setting(name) FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
        [list(REPORTED)],
    ).fetchall()
    return {str(name): str(value) for name, value in rows}


def postgres_version() -> str:
    """The version line of the benchmarked server's ``postgres`` binary."""
    result = subprocess.run([str(binaries() / "postgres"), "--version"],
                            capture_output=True, text=True, check=False)
    return result.stdout.strip() or result.stderr.strip()


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gb: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
                break
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gb": memory_gb,
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def scratch_database(settings: dict[str, str]) -> Iterator[str]:
    """The DSN of a new database, dropped afterwards: on ``DATABASE_URL``'s server when it is
    set, else on an embedded server started in a temporary folder with ``settings``."""
    external = resolve_dsn()
    with contextlib.ExitStack() as stack:
        if external:
            admin = external
        else:
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="audit_mw_bench_"))
            server = EmbeddedServer(Path(folder) / "data", settings=settings,
                                    bin_dir=binaries())
            server.start()
            stack.callback(server.destroy)
            admin = server.dsn()
        name = f"audit_mw_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        params = psycopg.conninfo.conninfo_to_dict(admin)
        params["dbname"] = name
        try:
            yield psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})
        finally:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
