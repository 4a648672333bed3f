"""What the package ships for status to compare with matches the migrations it ships; and
an install by a non-superuser role with CREATEROLE hands capture to its role too."""

from __future__ import annotations

import json

import psycopg
from psycopg import sql

from audit_mw import _sql
from audit_mw.capture import _shipped
from audit_mw.capture.schema import CAPTURE_ROLE, OWNER_ROLE, install
from audit_mw.capture.tracking import status, track
from tests.conftest import ROOT, Cluster


def test_the_shipped_manifest_matches_every_migration(empty_dsn: str, template_db: str) -> None:
    # template_db: the audit roles exist once the template is installed.
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        built = _shipped.build(conn, OWNER_ROLE, CAPTURE_ROLE)
        major = conn.info.server_version // 10000
    assert sorted(built, key=int) == [str(m.version) for m in _sql.migrations()]
    for version, snapshot in built.items():
        expected = _shipped.shipped(int(version), major)
        assert expected is not None
        assert snapshot == expected.as_json(), (
            f"schema version {version} on PostgreSQL {major} differs from sql/shipped.json; "
            "run python tools/ship_manifest.py on this server")


def test_older_servers_differ_only_in_the_input_check_functions() -> None:
    # The variants are what PostgreSQL 15 builds differently (no pg_input_is_valid there);
    # anything else showing up here would mean a migration that behaves differently by server.
    shipped = json.loads((ROOT / "src" / "audit_mw" / "sql" / "shipped.json").read_text())
    variants = shipped[_shipped.VARIANTS_KEY]
    latest = str(max(m.version for m in _sql.migrations()))
    assert set(variants) == {"15"}
    assert set(variants["15"]) == {"audit.valid_inet(text)", "audit.valid_jsonb(text)"}
    for name, fingerprint in variants["15"].items():
        assert fingerprint != shipped[latest]["functions"][name]


def test_install_by_a_createrole_role_hands_capture_to_its_role(
    cluster: Cluster, empty_dsn: str, template_db: str
) -> None:
    role = "audit_mw_test_creator"
    with cluster.admin() as admin:
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEROLE").format(sql.Identifier(role)))
        # The audit roles exist already (made by the suite's superuser): a CREATEROLE role
        # administers them when it is given them with ADMIN OPTION.
        for audit_role in ("audit_owner", "audit_reader", "audit_writer", "audit_capture"):
            admin.execute(sql.SQL("GRANT {} TO {} WITH ADMIN OPTION").format(
                sql.Identifier(audit_role), sql.Identifier(role)))
    dbname = psycopg.conninfo.conninfo_to_dict(empty_dsn)["dbname"]
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("GRANT CREATE ON DATABASE {} TO {}").format(
            sql.Identifier(str(dbname)), sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(role)))
    try:
        with psycopg.connect(cluster.dsn(str(dbname), user=role), autocommit=True) as own:
            result = install(own)
            assert (result.owner, result.ddl_watched) == ("audit_owner", False)
            own.execute("CREATE TABLE t (id int PRIMARY KEY, note text)")
            track(own, "t")
            own.execute("INSERT INTO t VALUES (1, 'x')")
            checked = status(own)
            assert checked.ok, checked.problems
            assert checked.notes[0].startswith("DDL is not watched")
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            owners = dict(conn.execute("""
                SELECT p.proname, pg_get_userbyid(p.proowner) FROM pg_proc p
                WHERE p.pronamespace = 'audit'::regnamespace AND p.proname LIKE 'capture%'
            """).fetchall())
            assert set(owners.values()) == {"audit_capture"}
            assert conn.execute("SELECT has_schema_privilege('audit_capture', 'audit', "
                                "'CREATE')").fetchone() == (False,)
            row = conn.execute("SELECT db_role FROM audit.events").fetchone()
            assert row == (role,)
    finally:
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            conn.execute("DROP SCHEMA audit CASCADE; DROP TABLE IF EXISTS t")
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        with cluster.admin() as admin:
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_after_pg_upgrade_the_older_servers_input_checks_are_accepted() -> None:
    # A database installed on PostgreSQL 15 and moved to a later server with pg_upgrade keeps
    # the input checks made for 15 (they work everywhere); status must not call them changed.
    older = _shipped.server_variants(15)
    assert older
    for name, fingerprint in older.items():
        assert fingerprint in _shipped.upgraded_variants(18)[name]
        assert fingerprint in _shipped.upgraded_variants(16)[name]
    assert _shipped.upgraded_variants(15) == {}
