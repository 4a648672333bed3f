"""Regenerate src/audit_mw/sql/shipped.json from the migrations.

Applies every migration in order to a fresh database (DATABASE_URL, or an embedded server)
and records what each schema version holds. Run after adding a migration:

    python tools/ship_manifest.py          # write the file
    python tools/ship_manifest.py --check  # exit 1 if the file is out of date

A server of PostgreSQL 16 or later writes the main entries; PostgreSQL 15 writes only the
function fingerprints that differ there (``server_variants``), so run it on both when a
migration changes one of those functions:

    python tools/pg_server.py --pg 15 -- python tools/ship_manifest.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from audit_mw.capture import _shipped
from audit_mw.capture.schema import CAPTURE_ROLE, OWNER_ROLE, install
from audit_mw.testing.embedded import EmbeddedServer, resolve_dsn

TARGET = Path(__file__).resolve().parent.parent / "src" / "audit_mw" / "sql" / "shipped.json"


def build(admin_dsn: str) -> tuple[int, dict[str, Any]]:
    """The server's major version and the manifest its fresh installs give."""
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
            major = conn.info.server_version // 10000
            manifest = _shipped.build(conn, OWNER_ROLE, CAPTURE_ROLE)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            for name in names:
                admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
    return major, manifest


def merged(existing: dict[str, Any], major: int, built: dict[str, Any]) -> dict[str, Any]:
    """The file's new content: ``built`` as the main entries (16 and later), or as the
    variants of an older server, which may differ from the main entries in function
    fingerprints only."""
    variants: dict[str, dict[str, str]] = dict(existing.get(_shipped.VARIANTS_KEY, {}))
    if major >= _shipped.MAIN_SINCE:
        return {**built, _shipped.VARIANTS_KEY: variants}
    differing: dict[str, str] = {}
    for version, snapshot in built.items():
        main = existing.get(version)
        if main is None:
            raise SystemExit(f"schema version {version} has no main entry yet: run this on "
                             f"PostgreSQL {_shipped.MAIN_SINCE} or later first")
        if snapshot["triggers"] != main["triggers"] or snapshot["objects"] != main["objects"]:
            raise SystemExit(f"schema version {version} differs on PostgreSQL {major} in "
                             "more than function bodies; the manifest cannot describe that")
        for name, fingerprint in snapshot["functions"].items():
            if main["functions"].get(name) == fingerprint:
                continue
            if differing.setdefault(name, fingerprint) != fingerprint:
                raise SystemExit(f"{name} differs between schema versions on PostgreSQL "
                                 f"{major}; the manifest keeps one variant per function")
    variants[str(major)] = differing
    return {**existing, _shipped.VARIANTS_KEY: variants}


def render(admin_dsn: str) -> str:
    existing = json.loads(TARGET.read_text(encoding="utf-8"))
    major, built = build(admin_dsn)
    return json.dumps(merged(existing, major, built), indent=1, sort_keys=True) + "\n"


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
