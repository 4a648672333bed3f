"""Regenerate src/audit_mw/sql/shipped.json from the migrations.

Applies every migration in order to a fresh database (DATABASE_URL, or an embedded server)
and records what each schema version holds. Run after adding a migration:

    python tools/ship_manifest.py          # write the file
    python tools/ship_manifest.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path

import psycopg
from psycopg import sql

from audit_mw.capture import _shipped
from audit_mw.capture.schema import CAPTURE_ROLE, OWNER_ROLE, install
from audit_mw.testing.embedded import EmbeddedServer, resolve_dsn

TARGET = Path(__file__).resolve().parent.parent / "src" / "audit_mw" / "sql" / "shipped.json"


def render(admin_dsn: str) -> str:
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    names = [f"audit_mw_ship_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        for name in names:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        with psycopg.connect(psycopg.conninfo.make_conninfo(
                "", **{**params, "dbname": names[0]})) as conn:  # type: ignore[arg-type]
            install(conn)  # creates the roles
        with psycopg.connect(psycopg.conninfo.make_conninfo(
                "", **{**params, "dbname": names[1]}), autocommit=True) as conn:  # type: ignore[arg-type]
            manifest = _shipped.build(conn, OWNER_ROLE, CAPTURE_ROLE)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def main() -> int:
    dsn = resolve_dsn()
    if dsn:
        text = render(dsn)
    else:
        server = EmbeddedServer(Path(tempfile.mkdtemp(prefix="audit_mw_ship_")) / "data")
        server.start()
        try:
            text = render(server.dsn())
        finally:
            server.destroy()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date; run python tools/ship_manifest.py")
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
