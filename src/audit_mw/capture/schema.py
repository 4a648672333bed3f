"""Installing and upgrading the audit schema.

:func:`install` is idempotent: on an empty database it creates everything, on an older
install it applies the migrations that are missing, and on a current install it changes
nothing. Migrations are the numbered files in ``audit_mw/sql/migrations``; a released file is
never edited, and a checksum recorded at install time proves it.

The privilege model (see ``docs/index.md``):

- ``audit_owner`` (NOLOGIN) owns the audit schema and everything in it. The application role
  must not be, or be a member of, this role.
- ``audit_reader`` (NOLOGIN) may read the trail; grant it to the roles of the admin routes.
- ``audit_writer`` (NOLOGIN) may record application events through the functions made for
  it; it never gets INSERT on the table. Grant it to the application role.
- ``audit_capture`` (NOLOGIN) owns the capture functions, which run with its rights: it may
  only INSERT into ``audit.events``. It owns no table and may CREATE nowhere, so nothing that
  runs inside capture can reach the guards, the functions or the schema (see
  ``docs/threat-model.md``). Grant it to nobody.

These roles are created when the installing role may create roles (a superuser, or a role
with CREATEROLE). Otherwise the installing role owns the schema, and :func:`status` says so.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.errors import SchemaError

__all__ = [
    "CAPTURE_ROLE",
    "OWNER_ROLE",
    "READER_ROLE",
    "WRITER_ROLE",
    "InstallResult",
    "install",
    "installed_version",
    "pinned_search_path",
]

OWNER_ROLE = "audit_owner"
READER_ROLE = "audit_reader"
WRITER_ROLE = "audit_writer"
CAPTURE_ROLE = "audit_capture"

#: The trigger functions owned by (and so run as) CAPTURE_ROLE.
CAPTURE_FUNCTIONS = (
    "audit.capture_insert()", "audit.capture_delete()", "audit.capture_update()",
    "audit.capture_update_rows()", "audit.capture_truncate()",
)

#: The oldest server the SQL is written for and tested on (MERGE, STRATEGY FILE_COPY: 15).
MIN_SERVER_VERSION = 150000

#: Guard triggers are recorded in audit.object_hashes under this prefix ("guard:events.x").
GUARD_PREFIX = "guard:"


@dataclass(frozen=True, slots=True)
class InstallResult:
    """What :func:`install` did."""

    applied: tuple[int, ...]
    version: int
    owner: str
    roles_created: tuple[str, ...] = field(default=())
    #: Whether DDL on tracked tables and on the trail is recorded (and capture triggers and
    #: guards cannot be disabled or dropped): event triggers need a superuser.
    ddl_watched: bool = False


def version_text(server_version_num: int) -> str:
    """A ``server_version_num`` as people write it: 150018 is ``15.18``, 90624 ``9.6.24``.

    A major version alone (150000) prints as ``15``.
    """
    major, rest = divmod(server_version_num, 10000)
    if major >= 10:  # from 10 on: major.minor
        return f"{major}.{rest}" if rest else str(major)
    middle, patch = divmod(rest, 100)
    return f"{major}.{middle}.{patch}"


def check_server_version(server_version_num: int) -> None:
    """Raise :class:`SchemaError` for a server older than the oldest one supported (15)."""
    if server_version_num < MIN_SERVER_VERSION:
        raise SchemaError(
            f"audit_mw needs PostgreSQL {version_text(MIN_SERVER_VERSION)} or newer; "
            f"this server is {version_text(server_version_num)}"
        )


def installed_version(conn: psycopg.Connection[Any]) -> int:
    """The newest migration applied to this database, 0 when the schema is not installed."""
    with conn.cursor() as cur:
        cur.execute(_sql.query("install", "schema_exists"))
        row = cur.fetchone()
        if not row or not row[0]:
            return 0
        cur.execute(_sql.query("install", "applied_migrations"))
        rows = cur.fetchall()
    return max((int(r[0]) for r in rows), default=0)


def install(
    conn: psycopg.Connection[Any],
    *,
    writer_roles: tuple[str, ...] | list[str] = (),
    reader_roles: tuple[str, ...] | list[str] = (),
    watch_ddl: bool = True,
) -> InstallResult:
    """Install or upgrade the audit schema in the database ``conn`` is connected to.

    Runs in one transaction (all or nothing) under an advisory lock, so that two installers
    never interleave. ``writer_roles`` are granted ``audit_writer`` (record app events) and
    ``reader_roles`` ``audit_reader`` (read the trail). With ``watch_ddl`` (the default) and a
    superuser, event triggers put DDL on tracked tables and on the trail on the timeline,
    refuse disabling or dropping capture triggers and guards, and capture partitions created
    or attached after ``track`` (``InstallResult.ddl_watched``;
    without them ``status`` notes that DDL is not watched). Raises :class:`SchemaError` when the
    server is too old or a released migration differs from what was applied.
    """
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("install", "lock"))
        cur.execute(_sql.query("install", "role_facts"))
        facts = cur.fetchone()
        if facts is None:  # current_user always has a pg_roles row; be loud if not
            raise SchemaError("cannot read the installing role from pg_roles")
        check_server_version(int(facts["server_version"]))
        may_create_roles = bool(facts["is_superuser"] or facts["can_create_role"])
        created = _ensure_roles(cur) if may_create_roles else ()
        owner = OWNER_ROLE if may_create_roles else str(facts["current_role"])
        if may_create_roles and not facts["is_superuser"]:
            # A CREATEROLE role administers the roles it created but must be a member to
            # SET ROLE to the owner.
            cur.execute(_sql.query("install", "grant_role_to_current").format(
                role=sql.Identifier(OWNER_ROLE)))

        cur.execute(_sql.query("install", "create_schema").format(owner=sql.Identifier(owner)))
        if owner != facts["current_role"]:
            cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        cur.execute(_sql.query("install", "create_migrations_table"))
        pending = _pending(cur)
        if pending and may_create_roles:
            # Migrations run as the owner, which must own what they replace.
            cur.execute("RESET ROLE")
            cur.execute(_sql.query("install", "capture_functions_to_owner"))
            cur.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        if pending:
            # Refuse to build on functions someone changed: an upgrade re-records the
            # hashes, and must not launder a tampered definition into the new baseline.
            with pinned_search_path(cur):
                _refuse_changed_functions(cur)
            applied = _apply_migrations(cur, pending)
            with pinned_search_path(cur):
                _record_function_hashes(cur)
        else:
            applied = []
        cur.execute("RESET ROLE")

        if may_create_roles:
            _hand_capture_to_its_role(cur, bool(facts["is_superuser"]))
            cur.execute(_sql.query("install", "grant_privileges").format(
                reader=sql.Identifier(READER_ROLE), writer=sql.Identifier(WRITER_ROLE)))
            for grantee in writer_roles:
                cur.execute(_sql.query("install", "grant_role").format(
                    role=sql.Identifier(WRITER_ROLE), grantee=sql.Identifier(grantee)))
            for grantee in reader_roles:
                cur.execute(_sql.query("install", "grant_role").format(
                    role=sql.Identifier(READER_ROLE), grantee=sql.Identifier(grantee)))
        elif writer_roles or reader_roles:
            raise SchemaError(
                "granting audit roles needs a role that may create roles (superuser or "
                "CREATEROLE); run install as such a role, or grant privileges by hand"
            )
        watched = False
        if watch_ddl and facts["is_superuser"]:
            # Last, so that the install's own statements are not recorded as DDL.
            cur.execute(_sql.query("install", "watch_ddl"))
            watched = True
    return InstallResult(
        applied=tuple(applied),
        version=_sql.migrations()[-1].version,
        owner=owner,
        roles_created=created,
        ddl_watched=watched,
    )


@contextlib.contextmanager
def pinned_search_path(cur: psycopg.Cursor[dict[str, object]]) -> Iterator[None]:
    """Run a block with ``search_path`` set to ``pg_catalog, pg_temp``, then restore it.

    Object definitions print names qualified relative to the search_path; hashing them under
    one fixed path makes hashes comparable between sessions. The old path is restored
    explicitly because the caller's transaction may go on after ours.
    """
    cur.execute(_sql.query("install", "pin_search_path"))
    row = cur.fetchone()
    if row is None:
        raise SchemaError("cannot read search_path")
    try:
        yield
    finally:
        cur.execute(_sql.query("install", "restore_search_path"), {"old_path": row["old_path"]})


def _ensure_roles(cur: psycopg.Cursor[dict[str, object]]) -> tuple[str, ...]:
    created = []
    for role in (OWNER_ROLE, READER_ROLE, WRITER_ROLE, CAPTURE_ROLE):
        cur.execute(_sql.query("install", "role_exists"), {"role": role})
        row = cur.fetchone()
        if row and not next(iter(row.values())):
            cur.execute(_sql.query("install", "create_role").format(role=sql.Identifier(role)))
            created.append(role)
    return tuple(created)


def _hand_capture_to_its_role(cur: psycopg.Cursor[dict[str, object]], superuser: bool) -> None:
    """Make CAPTURE_ROLE own the capture functions, with INSERT on audit.events only.

    A non-superuser installer must be a member of the new owner, and the new owner needs
    CREATE on the schema at the moment of the change; it is revoked right after, so the
    capture role never keeps it.
    """
    capture = sql.Identifier(CAPTURE_ROLE)
    if not superuser:
        cur.execute(_sql.query("install", "grant_role_to_current").format(role=capture))
    cur.execute(_sql.query("install", "capture_privileges").format(capture=capture))
    for function in CAPTURE_FUNCTIONS:
        cur.execute(_sql.query("install", "function_owner").format(
            function=sql.SQL(function), owner=capture))
    cur.execute(_sql.query("install", "revoke_capture_create").format(capture=capture))


def _pending(cur: psycopg.Cursor[dict[str, object]]) -> list[_sql.Migration]:
    """The migrations not applied yet; refuses when an applied one was edited since."""
    cur.execute(_sql.query("install", "applied_migrations"))
    done = {int(str(r["version"])): str(r["checksum"]) for r in cur.fetchall()}
    for migration in _sql.migrations():
        if migration.version in done and (
                done[migration.version] not in migration.accepted_checksums):
            raise SchemaError(
                f"migration {migration.version:04d}_{migration.name} differs from the one "
                "applied to this database; released migrations must not be edited"
            )
    return [m for m in _sql.migrations() if m.version not in done]


def _apply_migrations(
    cur: psycopg.Cursor[dict[str, object]], pending: list[_sql.Migration]
) -> list[int]:
    for migration in pending:
        # The package's own file, several statements: sent as one simple-protocol script.
        cur.execute(sql.SQL(migration.text))
        cur.execute(
            _sql.query("install", "record_migration"),
            {"version": migration.version, "name": migration.name,
             "checksum": migration.checksum},
        )
    return [m.version for m in pending]


def _refuse_changed_functions(cur: psycopg.Cursor[dict[str, object]]) -> None:
    cur.execute("SELECT pg_catalog.to_regclass('audit.object_hashes') IS NOT NULL")
    row = cur.fetchone()
    if not row or not next(iter(row.values())):
        return  # a fresh install: nothing recorded yet
    cur.execute(_sql.query("install", "object_hashes"))
    recorded = {str(r["object_name"]): str(r["definition_hash"]) for r in cur.fetchall()
                if not str(r["object_name"]).startswith(GUARD_PREFIX)}
    if not recorded:
        return  # migrations applied by hand, never recorded: nothing to compare against
    cur.execute(_sql.query("install", "function_definitions"))
    actual = {str(r["name"]): str(r["definition_hash"]) for r in cur.fetchall()}
    changed = sorted(n for n in recorded.keys() | actual.keys()
                     if recorded.get(n) != actual.get(n))
    if changed:
        raise SchemaError(
            "refusing to upgrade: these audit functions differ from what was installed: "
            f"{', '.join(changed)}; investigate (see `audit-mw status`) before upgrading")


def _record_function_hashes(cur: psycopg.Cursor[dict[str, object]]) -> None:
    """Record what status() compares against: every function's hash, every guard trigger."""
    cur.execute(_sql.query("install", "function_definitions"))
    rows = [(str(r["name"]), str(r["definition_hash"])) for r in cur.fetchall()]
    cur.execute(_sql.query("install", "guard_triggers"))
    rows += [(GUARD_PREFIX + str(r["name"]), "A") for r in cur.fetchall()]
    cur.execute(_sql.query("install", "clear_object_hashes"))
    for name, definition_hash in rows:
        cur.execute(
            _sql.query("install", "record_object_hash"),
            {"name": name, "hash": definition_hash},
        )
