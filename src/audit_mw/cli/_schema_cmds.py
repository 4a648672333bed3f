"""install, track, retrack, untrack, status."""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from typing import Any

from audit_mw.capture.schema import install
from audit_mw.capture.tracking import Status, TrackedTable, retrack, status, track, untrack
from audit_mw.cli._connect import connect
from audit_mw.errors import TrackingError


def register(commands: Any) -> None:
    p = commands.add_parser("install", help="install or upgrade the audit schema (idempotent)")
    p.add_argument("--writer-role", action="append", default=[], metavar="ROLE",
                   help="grant audit_writer (record app events) to ROLE; repeatable")
    p.add_argument("--reader-role", action="append", default=[], metavar="ROLE",
                   help="grant audit_reader (read the trail) to ROLE; repeatable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_install)

    p = commands.add_parser("track", help="capture row changes of tables")
    p.add_argument("tables", nargs="+", metavar="TABLE")
    p.add_argument("--exclude", action="append", default=[], metavar="TABLE.COLUMN",
                   help="never store this column; repeatable")
    p.add_argument("--mask", action="append", default=[], metavar="TABLE.COLUMN",
                   help="store this column as '[masked]'; repeatable")
    p.add_argument("--allow-no-primary-key", action="store_true",
                   help="track tables without a primary key (record_id is then NULL)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_track)

    p = commands.add_parser(
        "retrack", help="create the triggers of tracked tables again, with their recorded options")
    p.add_argument("tables", nargs="*", metavar="TABLE",
                   help="only these tracked tables (default: every tracked table)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_retrack)

    p = commands.add_parser("untrack", help="stop capturing row changes of tables")
    p.add_argument("tables", nargs="+", metavar="TABLE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_untrack)

    p = commands.add_parser(
        "status", help="check the installed schema and triggers; exit 1 if anything is off")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_status)


def cmd_install(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        result = install(conn, writer_roles=args.writer_role, reader_roles=args.reader_role)
    if args.json:
        print(json.dumps({"version": result.version, "applied": list(result.applied),
                          "owner": result.owner}))
        return 0
    if result.applied:
        print(f"installed audit schema version {result.version} "
              f"(applied {', '.join(f'{v:04d}' for v in result.applied)}), owner {result.owner}")
    else:
        print(f"audit schema is current (version {result.version}), owner {result.owner}")
    return 0


def _split_columns(values: list[str], option: str) -> dict[str, list[str]]:
    by_table: dict[str, list[str]] = defaultdict(list)
    for value in values:
        table, dot, column = value.rpartition(".")
        if not dot or not table or not column:
            raise TrackingError(f"--{option} {value!r}: expected TABLE.COLUMN")
        by_table[table].append(column)
    return by_table


def cmd_track(args: argparse.Namespace) -> int:
    excluded = _split_columns(args.exclude, "exclude")
    masked = _split_columns(args.mask, "mask")
    unknown = (excluded.keys() | masked.keys()) - set(args.tables)
    if unknown:
        raise TrackingError(
            f"--exclude/--mask name tables not being tracked: {', '.join(sorted(unknown))}")
    done = []
    with connect(args) as conn:
        for table in args.tables:
            tracked = track(conn, table, exclude=excluded.get(table, ()),
                            mask=masked.get(table, ()),
                            allow_no_primary_key=args.allow_no_primary_key)
            done.append(tracked)
            if not args.json:
                print(f"tracking {_describe(tracked)}")
    if args.json:
        print(json.dumps({"tracked": [_tracked_json(t) for t in done]}))
    return 0


def cmd_retrack(args: argparse.Namespace) -> int:
    done: list[TrackedTable] = []

    def on_table(tracked: TrackedTable) -> None:
        done.append(tracked)
        if not args.json:
            print(f"tracking again {_describe(tracked)}", flush=True)

    with connect(args) as conn:
        retrack(conn, args.tables, on_table=on_table)
    if args.json:
        print(json.dumps({"tracked": [_tracked_json(t) for t in done]}))
    return 0


def _tracked_json(tracked: TrackedTable) -> dict[str, Any]:
    return {"table": tracked.qualified_name, "key": list(tracked.key_columns),
            "excluded": list(tracked.excluded), "masked": list(tracked.masked)}


def _describe(tracked: TrackedTable) -> str:
    extras = []
    if tracked.excluded:
        extras.append(f"excluding {', '.join(tracked.excluded)}")
    if tracked.masked:
        extras.append(f"masking {', '.join(tracked.masked)}")
    key = ", ".join(tracked.key_columns) or "none"
    return f"{tracked.qualified_name} (key: {key})" + (f"; {'; '.join(extras)}" if extras else "")


def cmd_untrack(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        for table in args.tables:
            untrack(conn, table)
            if not args.json:
                print(f"stopped tracking {table}")
    if args.json:
        print(json.dumps({"untracked": list(args.tables)}))
    return 0


def _status_dict(result: Status) -> dict[str, object]:
    return {
        "ok": result.ok,
        "schema_version": result.schema_version,
        "latest_version": result.latest_version,
        "owner": result.owner,
        "problems": list(result.problems),
        "tables": [{"table": t.table, "ok": t.ok, "problems": list(t.problems)}
                   for t in result.tables],
    }


def cmd_status(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        result = status(conn)
    if args.json:
        print(json.dumps(_status_dict(result), indent=2))
        return 0 if result.ok else 1
    print(f"schema version {result.schema_version} (latest {result.latest_version}), "
          f"owner {result.owner or '-'}")
    for problem in result.problems:
        print(f"  PROBLEM: {problem}")
    if not result.tables:
        print("no tables tracked yet; run `audit-mw track TABLE`")
    for table in result.tables:
        if table.ok:
            print(f"  {table.table}: ok")
        for problem in table.problems:
            print(f"  {table.table}: PROBLEM: {problem}")
    print("status: ok" if result.ok else "status: NOT OK")
    return 0 if result.ok else 1
