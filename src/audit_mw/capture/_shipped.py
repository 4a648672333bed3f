"""What the package ships, per schema version, for :func:`audit_mw.capture.tracking.status` to
compare the database with.

``sql/shipped.json`` holds, for every schema version, a fingerprint of each function of the
audit schema, a hash of each trigger on its tables, and the names of its relations, types and
operators, as a fresh install of that version has them. It is generated from the migrations
by ``python -m tools.ship_manifest`` and a test proves it matches them. ``status`` compares
the database with this file, so that the roles it audits (or the schema owner) cannot make
it agree by rewriting what the database records about itself.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from importlib import resources
from typing import Any

import psycopg

from audit_mw import _sql

__all__ = ["Snapshot", "shipped", "snapshot"]

#: The capture role's name is written into one trigger's WHEN clause at install time; it is
#: replaced by this placeholder before hashing, so that installs with and without the role
#: compare alike.
CAPTURE_PLACEHOLDER = "{capture_role}"

#: The manifest's key for the fingerprints that differ on older servers, by server major.
VARIANTS_KEY = "server_variants"

#: Servers from this major on build the manifest's main entries; older ones build variants.
MAIN_SINCE = 16


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Fingerprints of the audit schema's functions and triggers, and its other objects."""

    functions: dict[str, str]
    triggers: dict[str, str]
    objects: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"functions": self.functions, "triggers": self.triggers,
                "objects": list(self.objects)}


def _trigger_hash(definition: str, enabled: str, capture_role: str) -> str:
    normal = definition.replace(f"'{capture_role}'::name", f"'{CAPTURE_PLACEHOLDER}'::name")
    return hashlib.sha256(f"{normal}|{enabled}".encode()).hexdigest()[:32]


def snapshot(cur: psycopg.Cursor[Any], capture_role: str) -> Snapshot:
    """The audit schema as it is now (run with a pinned search_path)."""
    cur.execute(_sql.query("install", "shipped_functions"))
    functions = {str(r["name"]): str(r["fingerprint"]) for r in cur.fetchall()}
    cur.execute(_sql.query("install", "shipped_triggers"))
    triggers = {str(r["name"]): _trigger_hash(str(r["definition"]), str(r["enabled"]),
                                              capture_role) for r in cur.fetchall()}
    cur.execute(_sql.query("install", "shipped_objects"))
    objects = tuple(str(r["name"]) for r in cur.fetchall())
    return Snapshot(functions, triggers, objects)


@functools.cache
def _manifest() -> dict[str, Any]:
    text = resources.files("audit_mw").joinpath("sql", "shipped.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def shipped(version: int, server_major: int) -> Snapshot | None:
    """What a fresh install of schema ``version`` holds on a server of ``server_major``, or
    None if the package lacks it.

    A few functions are created differently on older servers (``audit.valid_inet`` and
    ``audit.valid_jsonb`` use ``pg_input_is_valid`` from PostgreSQL 16 on); their
    fingerprints for those servers are in the manifest's ``server_variants``.
    """
    entry = _manifest().get(str(version))
    if entry is None:
        return None
    functions = dict(entry["functions"])
    for name, fingerprint in server_variants(server_major).items():
        if name in functions:
            functions[name] = fingerprint
    return Snapshot(functions, dict(entry["triggers"]), tuple(entry["objects"]))


def upgraded_variants(server_major: int) -> dict[str, set[str]]:
    """Fingerprints a function may also have on a server of ``server_major``: those of older
    servers' variants, which a database installed there keeps after ``pg_upgrade`` (they
    work on every later server)."""
    variants: dict[str, dict[str, str]] = _manifest().get(VARIANTS_KEY, {})
    accepted: dict[str, set[str]] = {}
    for major, functions in variants.items():
        if int(major) < server_major:
            for name, fingerprint in functions.items():
                accepted.setdefault(name, set()).add(fingerprint)
    return accepted


def server_variants(server_major: int) -> dict[str, str]:
    """The function fingerprints that differ on a server of ``server_major``."""
    variants: dict[str, dict[str, str]] = _manifest().get(VARIANTS_KEY, {})
    return dict(variants.get(str(server_major), {}))


def build(conn: psycopg.Connection[Any], owner: str, capture_role: str) -> dict[str, Any]:
    """The manifest: each migration applied in order to ``conn``'s empty database as
    ``owner`` (which must exist), with a snapshot after each. For the generator and its test.
    """
    from psycopg import sql  # noqa: PLC0415  (build-time only)
    from psycopg.rows import dict_row  # noqa: PLC0415

    from audit_mw.capture.schema import pinned_search_path  # noqa: PLC0415

    result: dict[str, Any] = {}
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(sql.SQL("CREATE SCHEMA audit AUTHORIZATION {}").format(sql.Identifier(owner)))
        cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        cur.execute(_sql.query("install", "create_migrations_table"))
        for migration in _sql.migrations():
            cur.execute(sql.SQL(migration.text))  # the package's own file
            with pinned_search_path(cur):
                result[str(migration.version)] = snapshot(cur, capture_role).as_json()
        cur.execute("RESET ROLE")
    return result
