"""Turning row-change capture on and off per table, and reporting its state.

:func:`track` reads the table's primary key from the catalog once, and creates four
statement-level triggers on it (``audit_mw_insert``, ``audit_mw_update``, ``audit_mw_delete``,
``audit_mw_truncate``) whose arguments carry the key, excluded and masked columns, so nothing
is looked up per row.

:func:`status` compares what is installed with what the package installed: every function of
the audit schema against the hash recorded at install time, every tracked table's triggers
against the hash recorded at track time, and the append-only guards on ``audit.events``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.capture import _shipped
from audit_mw.capture.partitions import partition_guard_problems
from audit_mw.capture.schema import (
    CAPTURE_FUNCTIONS,
    CAPTURE_ROLE,
    GUARD_PREFIX,
    installed_version,
    pinned_search_path,
)
from audit_mw.errors import SchemaError, TrackingError

__all__ = ["TableStatus", "TrackedTable", "retrack", "status", "track", "untrack"]

TRIGGER_NAMES = ("audit_mw_delete", "audit_mw_insert", "audit_mw_truncate", "audit_mw_update")
#: How the capture triggers and the guards are installed: ENABLE ALWAYS.
_STATES = {"O": "fires only in origin mode (session_replication_role = replica skips it)",
           "R": "fires only in replica mode", "D": "is disabled"}
#: The schema version from which audit.events is partitioned (each partition has guards).
PARTITIONED_SINCE = 6
#: The schema version from which capture runs as its own role and follows renamed columns
#: (migration NNNN_audited_cannot_reach; read from the file so that a renumbering stays in
#: one place).
ROLES_SINCE = next(m.version for m in _sql.migrations() if m.name == "audited_cannot_reach")
#: The schema version from which new partitions get capture where DDL is watched.
NEW_PARTITIONS_SINCE = next(m.version for m in _sql.migrations()
                            if m.name == "new_partitions_captured")
#: Owned by a superuser where DDL is watched (see migration 0010), else by the schema owner.
NEW_PARTITIONS_FUNCTION = "audit.watch_partitions()"


@dataclass(frozen=True, slots=True)
class TrackedTable:
    """A table whose row changes are captured."""

    schema_name: str
    table_name: str
    key_columns: tuple[str, ...]
    excluded: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()

    @property
    def qualified_name(self) -> str:
        return f"{self.schema_name}.{self.table_name}"


@dataclass(frozen=True, slots=True)
class TableStatus:
    """The state of one tracked table's triggers: ``ok``, or what is wrong."""

    table: str
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class Status:
    """The result of :func:`status`. ``ok`` is False when anything needs attention."""

    schema_version: int
    latest_version: int
    owner: str | None
    tables: tuple[TableStatus, ...] = ()
    problems: tuple[str, ...] = field(default=())
    #: What status cannot see, said once per run (it does not make ``ok`` False).
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.problems and all(t.ok for t in self.tables)


def _pg_text_array(values: Sequence[str]) -> str:
    """A PostgreSQL array literal for trigger arguments (which must be plain strings)."""
    quoted = (
        '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values
    )
    return "{" + ",".join(quoted) + "}"


def _require_schema(conn: psycopg.Connection[Any], *, current: bool = False) -> None:
    version = installed_version(conn)
    if version == 0:
        raise SchemaError("the audit schema is not installed here; run `audit-mw install` first")
    latest = _sql.migrations()[-1].version
    if current and version < latest:
        # The triggers track() creates call functions that older schema versions lack.
        raise SchemaError(f"the audit schema here is version {version}, older than this "
                          f"package's {latest}; run `audit-mw install` to upgrade it first")


def _resolve(cur: psycopg.Cursor[dict[str, object]], name: str) -> dict[str, object]:
    try:
        # In a savepoint: before PostgreSQL 16, to_regclass() raises on a malformed name (16
        # and later return NULL), and the caller's transaction must stay usable.
        with cur.connection.transaction():
            cur.execute(_sql.query("track", "resolve_table"), {"name": name})
    except psycopg.errors.InvalidName as exc:
        raise TrackingError(f"table {name!r} does not exist: not a valid table name "
                            f"({exc})") from None
    row = cur.fetchone()
    if row is None:
        raise TrackingError(f"table {name!r} does not exist (or is not on the search_path)")
    if row["relkind"] not in ("r", "p"):
        raise TrackingError(f"{name!r} is not a table; only tables (plain or partitioned) "
                            "can be tracked; changes through views reach their base tables")
    return row


def _hash_triggers(definitions: Iterable[str]) -> str:
    digest = hashlib.sha256()
    for definition in definitions:
        digest.update(definition.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def track(
    conn: psycopg.Connection[Any],
    table: str,
    *,
    exclude: Iterable[str] = (),
    mask: Iterable[str] = (),
    allow_no_primary_key: bool = False,
) -> TrackedTable:
    """Capture every row change of ``table`` into ``audit.events``.

    ``table`` is resolved like in SQL (``users``, ``public.users``, ``"Odd Name"``).
    ``exclude`` names columns that never reach the trail (and whose changes alone write no
    audit row); ``mask`` names columns stored as ``"[masked]"`` (the fact of a change is kept,
    the value is not). A table without a primary key is refused unless
    ``allow_no_primary_key`` is set; its rows are then recorded with a NULL ``record_id``.
    Tracking an already tracked table replaces its options. Runs in its own transaction.
    """
    excluded = tuple(dict.fromkeys(exclude))
    masked = tuple(dict.fromkeys(mask))
    try:
        _require_schema(conn, current=True)
        return _track(conn, table, excluded, masked, allow_no_primary_key)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise TrackingError(
            f"this role may not track {table!r}: {exc.diag.message_primary}; track runs as "
            "a superuser or a member of audit_owner that owns the table, or as a migration "
            "role given audit_mw.integrations.alembic.grant_migration_role (the capture "
            "triggers run audit functions that the audited roles may not call)") from None


def _track(
    conn: psycopg.Connection[Any], table: str, excluded: tuple[str, ...],
    masked: tuple[str, ...], allow_no_primary_key: bool,
) -> TrackedTable:
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("install", "lock"))
        cur.execute(_sql.query("track", "tracking"))
        info = _resolve(cur, table)
        cur.execute(_sql.query("track", "may_track"))
        allowed = cur.fetchone()
        if not allowed or not allowed["allowed"]:
            raise TrackingError(
                f"this role may not track {table!r}: it may not execute the audit capture "
                "functions; run track as a superuser or a member of audit_owner")
        cur.execute(_sql.query("track", "table_columns"), {"oid": info["oid"]})
        columns = [str(r["name"]) for r in cur.fetchall()]
        cur.execute(_sql.query("track", "primary_key_columns"), {"oid": info["oid"]})
        keys = tuple(str(r["name"]) for r in cur.fetchall())
        qualified = f"{info['schema_name']}.{info['table_name']}"
        if not keys and not allow_no_primary_key:
            raise TrackingError(
                f"table {qualified} has no primary key, so its rows cannot be told apart in "
                "the trail; add one, or track it with allow_no_primary_key "
                "(--allow-no-primary-key) to record its changes with a NULL record_id"
            )
        for option, names in (("exclude", excluded), ("mask", masked)):
            unknown = [n for n in names if n not in columns]
            if unknown:
                raise TrackingError(
                    f"{option}: {qualified} has no column {', '.join(map(repr, unknown))}")
            in_key = [n for n in names if n in keys]
            if in_key:
                raise TrackingError(
                    f"{option}: {', '.join(map(repr, in_key))} is part of the primary key of "
                    f"{qualified}; key columns identify the record and are always recorded")
        both = set(excluded) & set(masked)
        if both:
            raise TrackingError(f"columns {sorted(both)} are both excluded and masked; pick one")
        unsafe = _unsafe_casts(cur, info["oid"])
        if unsafe:
            raise TrackingError(f"{qualified} cannot be tracked: {unsafe[0]}")

        cur.execute(_sql.query("track", "has_json"), {"oid": info["oid"]})
        json_row = cur.fetchone()
        json_flag = "json" if json_row and json_row["has_json"] else ""
        relations = [(str(info["schema_name"]), str(info["table_name"]), info["oid"])]
        cur.execute(_sql.query("track", "partitions"), {"oid": info["oid"]})
        relations += [(str(r["schema_name"]), str(r["table_name"]), r["oid"])
                      for r in cur.fetchall()]
        for schema_name, table_name, oid in relations:
            target = sql.Identifier(schema_name, table_name)
            cur.execute(_sql.query("track", "drop_triggers").format(table=target))
            cur.execute(_sql.query("track", "create_triggers").format(
                table=target,
                keys=sql.Literal(_pg_text_array(keys)),
                excluded=sql.Literal(_pg_text_array(excluded)),
                masked=sql.Literal(_pg_text_array(masked)),
                schema_name=sql.Literal(str(info["schema_name"])),
                table_name=sql.Literal(str(info["table_name"])),
                excluded_nums=sql.Literal(_attnums(cur, oid, excluded)),
                masked_nums=sql.Literal(_attnums(cur, oid, masked)),
                json_flag=sql.Literal(json_flag),
            ))
        target = sql.Identifier(str(info["schema_name"]), str(info["table_name"]))
        with pinned_search_path(cur):
            cur.execute(_sql.query("track", "table_triggers"), {"oid": info["oid"]})
            installed = cur.fetchall()
        trigger_hash = _hash_triggers(str(r["definition"]) for r in installed)
        for row in installed:
            cur.execute(_sql.query("track", "comment_trigger").format(
                trigger=sql.Identifier(str(row["name"])),
                table=target,
                comment=sql.Literal(f"audit_mw capture trigger; set hash {trigger_hash}"),
            ))
        record_key = {"oid": info["oid"], "schema_name": info["schema_name"],
                 "table_name": info["table_name"]}
        cur.execute(_sql.query("track", "renamed_tracked"), record_key)
        renamed = cur.fetchone()
        if renamed and renamed["renamed"]:
            cur.execute(_sql.query("track", "delete_renamed_tracked"), record_key)
        cur.execute(_sql.query("track", "upsert_tracked"), {
            "schema_name": info["schema_name"], "table_name": info["table_name"],
            "key_columns": list(keys), "excluded": list(excluded), "masked": list(masked),
            "trigger_hash": trigger_hash, "oid": info["oid"],
        })
        cur.execute(_sql.query("track", "tracking_done"))
    return TrackedTable(str(info["schema_name"]), str(info["table_name"]), keys, excluded, masked)


def _attnums(cur: psycopg.Cursor[dict[str, object]], oid: object, names: Sequence[str]) -> str:
    if not names:
        return "{}"
    cur.execute(_sql.query("track", "attnums"), {"oid": oid, "names": list(names)})
    row = cur.fetchone()
    return str(row["nums"]) if row else "{}"


def _unsafe_casts(cur: psycopg.Cursor[dict[str, object]], oid: object) -> list[str]:
    """Casts to json that a non-superuser wrote on a type of the table, as sentences."""
    cur.execute(_sql.query("track", "unsafe_casts"), {"oid": oid})
    return [f"column {r['column_name']} has type {r['type_name']} with a cast to json by "
            f"role {r['function_owner']} ({r['cast_function']}), which capture would have to "
            "run; writes to it are refused until the cast is dropped" for r in cur.fetchall()]


def retrack(
    conn: psycopg.Connection[Any], tables: Iterable[str] = (), *,
    on_table: Callable[[TrackedTable], object] | None = None,
) -> tuple[TrackedTable, ...]:
    """Create the capture triggers of tracked tables again, with the options recorded for them.

    For after an upgrade whose migration changes how tables are captured (``status`` names
    the tables). The excluded and masked columns are those recorded by the last ``track``, so
    that none is forgotten: tracking again by hand without ``exclude`` would start storing a
    column that was kept out. ``tables`` limits it to these, each of which must be tracked;
    by default every tracked table. Each table is done in its own transaction, and reported
    to ``on_table`` when done. A tracked table that no longer exists is an error, raised
    after the others are done.
    """
    _require_schema(conn, current=True)
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("track", "tracked_tables_v8"))
        recorded = {(str(r["schema_name"]), str(r["table_name"])): r for r in cur.fetchall()}
        wanted = list(recorded)
        if tables:
            wanted = []
            renamed = {str(r["renamed_to"]): k for k, r in recorded.items() if r["renamed_to"]}
            for name in tables:
                info = _resolve(cur, name)
                key = (str(info["schema_name"]), str(info["table_name"]))
                new_name = sql.Identifier(*key).as_string(cur.connection)
                key = renamed.get(new_name, key)
                if key not in recorded:
                    raise TrackingError(f"table {key[0]}.{key[1]} is not tracked; "
                                        "use track to start capturing it")
                wanted.append(key)
    done: list[TrackedTable] = []
    gone: list[str] = []
    for key in wanted:
        row = recorded[key]
        name = sql.Identifier(*key).as_string(conn)
        if row["oid"] is None and row.get("renamed_to"):
            name = str(row["renamed_to"])  # the same table under its new name
        elif row["oid"] is None:
            gone.append(f"{key[0]}.{key[1]}")
            continue
        done.append(track(conn, name,
                          exclude=list(row["excluded"] or ()),
                          mask=list(row["masked"] or ()),
                          allow_no_primary_key=not row["key_columns"]))
        if on_table is not None:
            on_table(done[-1])
    if gone:
        raise TrackingError(f"tracked tables no longer exist: {', '.join(gone)}; "
                            "untrack them to stop status reporting them")
    return tuple(done)


def untrack(conn: psycopg.Connection[Any], table: str) -> None:
    """Stop capturing ``table``: drop its triggers. Its past audit rows stay.

    A tracked table that was dropped since is untracked by its qualified name as ``status``
    prints it (``public.orders``), so that ``status`` stops reporting it.
    """
    _require_schema(conn)
    with conn.transaction(), conn.cursor(row_factory=dict_row) as cur:
        cur.execute(_sql.query("install", "lock"))
        try:
            info = _resolve(cur, table)
        except TrackingError:
            if not _forget_dropped(cur, table):
                raise
            return
        cur.execute(_sql.query("track", "partitions"), {"oid": info["oid"]})
        relations = [(info["schema_name"], info["table_name"])]
        relations += [(r["schema_name"], r["table_name"]) for r in cur.fetchall()]
        for schema_name, table_name in relations:
            target = sql.Identifier(str(schema_name), str(table_name))
            cur.execute(_sql.query("track", "drop_triggers").format(table=target))
        cur.execute(_sql.query("track", "delete_tracked"),
                    {"schema_name": info["schema_name"], "table_name": info["table_name"],
                     "oid": info["oid"]})
        if cur.rowcount == 0:
            raise TrackingError(f"table {info['schema_name']}.{info['table_name']} "
                                "is not tracked")


def _forget_dropped(cur: psycopg.Cursor[dict[str, object]], name: str) -> bool:
    """Delete the record of a tracked table that no longer exists; False if there is none."""
    try:
        with cur.connection.transaction():
            cur.execute(_sql.query("track", "split_name"), {"name": name})
            row = cur.fetchone()
    except psycopg.DataError:  # not a name at all
        return False
    parts = list(row["parts"]) if row and row["parts"] else []  # type: ignore[call-overload]
    if len(parts) != 2:
        return False
    cur.execute(_sql.query("track", "delete_dropped_tracked"),
                {"schema_name": parts[0], "table_name": parts[1]})
    return cur.rowcount == 1


def status(conn: psycopg.Connection[Any], *, app_role: str | None = None) -> Status:
    """Compare the installed audit objects with what the package ships.

    Reports, per tracked table, whether its four triggers are present, enabled and current
    on the table and on each of its partitions, whether it was renamed, and whether a type
    it is made of carries a cast that capture would refuse to run. For the schema: whether
    the version is the latest; every function, trigger and object of schema ``audit``
    against the fingerprints shipped inside the package for that version (and against
    ``audit.object_hashes``); who owns the capture functions; the append-only guards.
    With ``app_role`` (the role the application connects as), also whether that role is a
    superuser or owns a tracked table, a type one is made of, or the audit schema. Read-only.
    """
    latest = _sql.migrations()[-1].version
    version = installed_version(conn)
    if version == 0:
        return Status(0, latest, None, problems=("the audit schema is not installed",))
    problems: list[str] = []
    tables: list[TableStatus] = []
    with (conn.transaction(), conn.cursor(row_factory=dict_row) as cur,
          pinned_search_path(cur)):
        cur.execute(_sql.query("install", "schema_owner"))
        owner_row = cur.fetchone()
        owner = str(owner_row["owner"]) if owner_row else None
        if version < latest:
            problems.append(f"schema version {version} is older than {latest}; "
                            "run `audit-mw install` to upgrade")
        problems += _function_problems(cur)
        problems += _guard_problems(cur)
        if version >= PARTITIONED_SINCE:
            problems += partition_guard_problems(cur)
        capture_role = _capture_role(cur, owner)
        problems += _shipped_problems(cur, version, capture_role)
        if version >= ROLES_SINCE:
            problems += _owner_problems(cur, owner, capture_role)
        cur.execute(_sql.query(
            "track", "tracked_tables_v8" if version >= ROLES_SINCE else "tracked_tables"))
        for tracked in cur.fetchall():
            tables.append(_table_status(cur, tracked, version))
        if app_role is not None:
            problems += _app_role_problems(cur, app_role)
        notes: tuple[str, ...] = ()
        if not _ddl_watched(cur, version):
            notes = ("DDL is not watched (no audit_mw event triggers: they need a superuser "
                     "at install): a capture trigger disabled, used and enabled again between "
                     "two status runs leaves no trace (see docs/threat-model.md)",)
    return Status(version, latest, owner, tuple(tables), tuple(problems), notes)


def _ddl_watched(cur: psycopg.Cursor[dict[str, object]], version: int) -> bool:
    if version < ROLES_SINCE:
        return False
    cur.execute(_sql.query("install", "ddl_watched"),
                {"expected": 3 if version >= NEW_PARTITIONS_SINCE else 2})
    row = cur.fetchone()
    return bool(row and row["watched"])


def _capture_role(cur: psycopg.Cursor[dict[str, object]], owner: str | None) -> str:
    cur.execute(_sql.query("install", "capture_role_exists"), {"role": CAPTURE_ROLE})
    row = cur.fetchone()
    return CAPTURE_ROLE if row and row["present"] else str(owner)


def _shipped_problems(
    cur: psycopg.Cursor[dict[str, object]], version: int, capture_role: str
) -> list[str]:
    """The schema against what the package ships for its version (not what it recorded)."""
    server_major = cur.connection.info.server_version // 10000
    expected = _shipped.shipped(version, server_major)
    upgraded = _shipped.upgraded_variants(server_major)
    if expected is None:
        return [f"this package ships no description of schema version {version}; "
                "use the audit_mw release that installed it"]
    actual = _shipped.snapshot(cur, capture_role)
    problems = []
    for name in sorted(expected.functions.keys() - actual.functions.keys()):
        problems.append(f"function {name} that audit_mw ships is missing")
    for name in sorted(actual.functions.keys() - expected.functions.keys()):
        problems.append(f"function {name} in schema audit was not shipped by audit_mw")
    for name in sorted(expected.functions.keys() & actual.functions.keys()):
        if (expected.functions[name] != actual.functions[name]
                and actual.functions[name] not in upgraded.get(name, ())):
            problems.append(f"function {name} differs from what audit_mw ships (its body, "
                            "language, SECURITY DEFINER, settings or signature changed)")
    for name in sorted(expected.triggers.keys() - actual.triggers.keys()):
        problems.append(f"trigger {name} that audit_mw ships on schema audit is missing")
    for name in sorted(actual.triggers.keys() - expected.triggers.keys()):
        problems.append(f"trigger {name} on schema audit was not shipped by audit_mw")
    for name in sorted(expected.triggers.keys() & actual.triggers.keys()):
        if expected.triggers[name] != actual.triggers[name]:
            problems.append(f"trigger {name} differs from what audit_mw ships "
                            "(its definition or its ENABLE ALWAYS state)")
    for name in sorted(set(actual.objects) - set(expected.objects)):
        problems.append(f"{name.replace(':', ' ', 1)} in schema audit was not created "
                        "by audit_mw")
    for name in sorted(set(expected.objects) - set(actual.objects)):
        problems.append(f"{name.replace(':', ' ', 1)} that audit_mw ships is missing")
    return problems


def _owner_problems(
    cur: psycopg.Cursor[dict[str, object]], owner: str | None, capture_role: str
) -> list[str]:
    """Capture runs as the capture role; everything else belongs to the schema owner."""
    cur.execute(_sql.query("install", "shipped_functions"))
    problems = []
    for row in cur.fetchall():
        name, actual = str(row["name"]), str(row["owner"])
        wanted = capture_role if name in CAPTURE_FUNCTIONS else owner
        if name == NEW_PARTITIONS_FUNCTION and row["owner_is_superuser"]:
            continue
        if actual != wanted:
            problems.append(f"function {name} is owned by {actual}, not {wanted}: it runs "
                            "with that role's rights")
    return problems


def _app_role_problems(cur: psycopg.Cursor[dict[str, object]], role: str) -> list[str]:
    """The preconditions of most attacks on the trail, for the application's role."""
    cur.execute(_sql.query("track", "app_role_facts"), {"role": role})
    row = cur.fetchone()
    if row is None or row["exists"] is False:
        return [f"application role {role} does not exist"]
    problems = []
    if row["superuser"]:
        problems.append(f"application role {role} is a superuser: it can change anything, "
                        "the trail included")
    for what in row["owns"] or ():  # type: ignore[attr-defined]
        problems.append(f"application role {role} owns {what}")
    return problems


def _guard_problems(cur: psycopg.Cursor[dict[str, object]]) -> list[str]:
    """The append-only guards recorded at install time must all be there, ENABLE ALWAYS."""
    cur.execute(_sql.query("install", "object_hashes"))
    expected = [str(r["object_name"]).removeprefix(GUARD_PREFIX) for r in cur.fetchall()
                if str(r["object_name"]).startswith(GUARD_PREFIX)]
    cur.execute(_sql.query("install", "guard_triggers"))
    present = {str(r["name"]): str(r["enabled"]) for r in cur.fetchall()}
    problems = []
    for name in expected:
        table, _, trigger = name.partition(".")
        where = f"append-only guard {trigger} on audit.{table}"
        if name not in present:
            problems.append(f"{where} is missing")
        elif present[name] != "A":
            problems.append(f"{where} {_STATES.get(present[name], 'is in an unknown state')}")
    return problems


def _function_problems(cur: psycopg.Cursor[dict[str, object]]) -> list[str]:
    cur.execute(_sql.query("install", "object_hashes"))
    expected = {str(r["object_name"]): str(r["definition_hash"]) for r in cur.fetchall()
                if not str(r["object_name"]).startswith(GUARD_PREFIX)}
    cur.execute(_sql.query("install", "function_definitions"))
    actual = {str(r["name"]): str(r["definition_hash"]) for r in cur.fetchall()}
    problems = []
    for name in sorted(expected.keys() - actual.keys()):
        problems.append(f"function {name} is missing")
    for name in sorted(actual.keys() - expected.keys()):
        problems.append(f"function {name} was not installed by audit_mw")
    for name in sorted(expected.keys() & actual.keys()):
        if expected[name] != actual[name]:
            problems.append(f"function {name} differs from the installed definition")
    return problems


def _table_status(
    cur: psycopg.Cursor[dict[str, object]], tracked: dict[str, object], version: int
) -> TableStatus:
    name = f"{tracked['schema_name']}.{tracked['table_name']}"
    if tracked["oid"] is None and tracked.get("renamed_to"):
        return TableStatus(name, (
            f"table was renamed to {tracked['renamed_to']}; its rows are recorded under the "
            f"new name, its record is not: run `audit-mw retrack`",))
    if tracked["oid"] is None:
        return TableStatus(name, ("table no longer exists",))
    cur.execute(_sql.query("track", "table_triggers"), {"oid": tracked["oid"]})
    triggers = cur.fetchall()
    present = {str(t["name"]): t for t in triggers}
    problems = []
    for trigger in TRIGGER_NAMES:
        if trigger not in present:
            problems.append(f"trigger {trigger} is missing")
        elif present[trigger]["enabled"] != "A":
            state = str(present[trigger]["enabled"])
            problems.append(f"trigger {trigger} {_STATES.get(state, 'is in an unknown state')}")
    update = present.get("audit_mw_update")
    if update is not None and " FOR EACH ROW " in str(update["definition"]):
        problems.append("trigger audit_mw_update is the row-level UPDATE capture of schema "
                        "versions before 7, which misses rows that an UPDATE moves between "
                        "partitions; run `audit-mw retrack`")
    insert = present.get("audit_mw_insert")
    if version >= ROLES_SINCE and insert is not None and int(str(insert["nargs"])) < 7:
        problems.append("triggers exclude and mask columns by name only (tracked before "
                        "schema version 9): a renamed column would be stored; run "
                        "`audit-mw retrack`")
    if not problems:
        current = _hash_triggers(str(t["definition"]) for t in triggers)
        if current != tracked["trigger_hash"]:
            problems.append("triggers differ from the ones audit_mw created "
                            "(outdated or changed); run `audit-mw retrack`")
    if version >= ROLES_SINCE:
        problems += _unsafe_casts(cur, tracked["oid"])
        problems += _json_problems(cur, tracked["oid"], insert)
    problems += _key_problems(cur, tracked)
    problems += _partition_problems(cur, tracked["oid"])
    return TableStatus(name, tuple(problems))


def _key_problems(
    cur: psycopg.Cursor[dict[str, object]], tracked: dict[str, object]
) -> list[str]:
    """A primary key renamed or replaced since track: the triggers still read the record id
    from the columns named then (NULL where they are gone)."""
    value = tracked.get("key_columns")
    recorded = [str(c) for c in value] if isinstance(value, (list, tuple)) else []
    if not recorded:
        return []  # tracked without a primary key: a NULL record id is what was chosen
    cur.execute(_sql.query("track", "primary_key_columns"), {"oid": tracked["oid"]})
    current = [str(r["name"]) for r in cur.fetchall()]
    if current == recorded:
        return []
    return [f"primary key is now ({', '.join(current) or 'none'}), tracked as "
            f"({', '.join(recorded)}): record ids are read from the columns tracked (NULL "
            "where they are gone); run `audit-mw retrack`"]


def _json_problems(
    cur: psycopg.Cursor[dict[str, object]], oid: object, insert: dict[str, object] | None
) -> list[str]:
    """A json column added since track needs the conversion that keeps what jsonb cannot."""
    cur.execute(_sql.query("track", "has_json"), {"oid": oid})
    row = cur.fetchone()
    if row and row["has_json"] and insert is not None \
            and not str(insert["definition"]).endswith("'json')"):
        return ["a json column was added since track: a value jsonb cannot hold "
                "(\\u0000) would fail writes; run `audit-mw retrack`"]
    return []


def _partition_problems(cur: psycopg.Cursor[dict[str, object]], oid: object) -> list[str]:
    """Partitions (at any depth) whose capture triggers are missing or not ENABLE ALWAYS."""
    cur.execute(_sql.query("track", "partitions"), {"oid": oid})
    problems = []
    for part in cur.fetchall():
        cur.execute(_sql.query("track", "table_triggers"), {"oid": part["oid"]})
        triggers = cur.fetchall()
        impostors = [str(t["name"]) for t in triggers
                     if str(t["function"]) not in CAPTURE_FUNCTIONS]
        if impostors:
            problems.append(f"partition {part['schema_name']}.{part['table_name']}: trigger "
                            f"{', '.join(impostors)} is not audit_mw's capture (it runs "
                            "another function): writes aimed at it are not recorded; drop it "
                            "and run `audit-mw retrack`")
            continue
        states = {str(t["name"]): str(t["enabled"]) for t in triggers}
        missing = [t for t in TRIGGER_NAMES if states.get(t) != "A"]
        if missing:
            problems.append(f"partition {part['schema_name']}.{part['table_name']} has no "
                            f"working capture ({', '.join(missing)} missing or not ENABLE "
                            "ALWAYS): writes aimed at it are not recorded; run "
                            "`audit-mw retrack`")
    return problems
