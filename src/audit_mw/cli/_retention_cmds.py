"""retention show|apply, hold add|remove|list, partitions ensure|list."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from typing import Any

from audit_mw.capture.partitions import MONTHS_AHEAD, ensure_partitions, list_partitions
from audit_mw.cli._archive_cmds import add_storage_option, storage_options
from audit_mw.cli._connect import connect
from audit_mw.errors import RetentionError
from audit_mw.integrity.keys import KeyRing
from audit_mw.integrity.retention import RetentionSink, retention_file_for
from audit_mw.retention import (
    RetentionResult,
    add_hold,
    apply_retention,
    list_holds,
    parse_policy,
    plan_retention,
    release_hold,
)

POLICY_ENV = "AUDIT_RETENTION_POLICY"


def register(commands: Any) -> None:
    p = commands.add_parser("retention", help="show or apply the retention policy")
    sub = p.add_subparsers(dest="retention_command", metavar="ACTION", required=True)
    for name, helptext in (("show", "what the policy would drop now; changes nothing"),
                           ("apply", "drop expired, sealed, unheld partitions")):
        q = sub.add_parser(name, help=helptext)
        q.add_argument("--policy", default=os.environ.get(POLICY_ENV),
                       help="hipaa, soc2, pci, or a duration such as 18mo, 2y, 400d "
                            f"(default: ${POLICY_ENV})")
        q.add_argument("--force", action="store_true",
                       help="accept a policy shorter than 12 months")
        q.add_argument("--now", type=_timestamp, default=None,
                       help="evaluate the policy at this ISO time instead of the clock")
        q.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "apply":
            q.add_argument("--dry-run", action="store_true", help="decide, drop nothing")
            q.add_argument("--archive", metavar="URL",
                           help="archive each partition to Parquet (a folder or an fsspec URL) "
                                "and verify it before dropping; see `audit-mw archive`")
            add_storage_option(q, "--archive-option")
            q.add_argument("--archive-dir", metavar="DIR",
                           help="write each partition as a verifiable export before dropping")
            q.add_argument("--checkpoint-file", default=os.environ.get("AUDIT_CHECKPOINT_FILE"),
                           help="the sealer's checkpoint file; retention checkpoints are "
                                "appended to FILE.retention (default: $AUDIT_CHECKPOINT_FILE)")
        q.set_defaults(handler=cmd_retention, apply=name == "apply")

    p = commands.add_parser("hold", help="legal holds: data under a hold is never dropped")
    sub = p.add_subparsers(dest="hold_command", metavar="ACTION", required=True)
    q = sub.add_parser("add", help="place a hold on a time range, a record or a user")
    q.add_argument("--reason", required=True)
    q.add_argument("--from", dest="range_from", type=_timestamp, help="start (ISO time)")
    q.add_argument("--to", dest="range_to", type=_timestamp, help="end (ISO time, exclusive)")
    q.add_argument("--table", help="TABLE or SCHEMA.TABLE of a record hold")
    q.add_argument("--record", help="record id of a record hold")
    q.add_argument("--user", help="app user id of a user hold")
    q.add_argument("--by", help="who places the hold (default: the database role)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_hold_add)
    q = sub.add_parser("remove", help="release a hold (it stays on record)")
    q.add_argument("hold_id", type=int)
    q.add_argument("--reason", required=True)
    q.add_argument("--by", help="who releases the hold (default: the database role)")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_hold_remove)
    q = sub.add_parser("list", help="the holds in force")
    q.add_argument("--all", action="store_true", help="include released holds")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_hold_list)

    p = commands.add_parser("partitions", help="the monthly partitions of audit.events")
    sub = p.add_subparsers(dest="partitions_command", metavar="ACTION", required=True)
    q = sub.add_parser("ensure", help="create the partitions of the coming months")
    q.add_argument("--months-ahead", type=int, default=MONTHS_AHEAD,
                   help=f"months after the current one (default {MONTHS_AHEAD})")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_partitions_ensure)
    q = sub.add_parser("list", help="every partition with its range and size")
    q.add_argument("--json", action="store_true", help="machine-readable output")
    q.set_defaults(handler=cmd_partitions_list)


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.astimezone(dt.UTC).isoformat()


def _result_json(result: RetentionResult) -> dict[str, Any]:
    return {
        "policy": result.policy.name, "description": result.policy.describe(),
        "now": _iso(result.now), "cutoff": _iso(result.cutoff), "dry_run": result.dry_run,
        "partitions": [{"partition": d.partition, "from": _iso(d.range_from),
                        "to": _iso(d.range_to), "drop": d.drop, "reason": d.reason,
                        "rows": d.rows, "holds": list(d.holds)} for d in result.decisions],
        "dropped": list(result.dropped),
        "retention_checkpoints": [c.seq for c in result.checkpoints],
        "archives": [str(a) for a in result.archives],
        "parquet_archives": [a.url for a in result.archived],
    }


def cmd_retention(args: argparse.Namespace) -> int:
    if not args.policy:
        raise RetentionError(f"no retention policy: pass --policy or set ${POLICY_ENV}")
    policy = parse_policy(args.policy)
    with connect(args) as conn:
        conn.autocommit = True  # each drop (and each archived month) is its own transaction
        if not args.apply:
            result = plan_retention(conn, policy, now=args.now, force=args.force)
        else:
            sinks = []
            if args.checkpoint_file:
                sinks.append(RetentionSink(retention_file_for(args.checkpoint_file)))
            elif not args.dry_run:
                print("audit-mw: warning: no --checkpoint-file: retention checkpoints are kept "
                      "in the database only", file=sys.stderr)
            keys = None if args.dry_run else KeyRing.from_env()
            result = apply_retention(
                conn, policy, keys, now=args.now, dry_run=args.dry_run, force=args.force,
                sinks=sinks, archive_dir=args.archive_dir, archive=args.archive,
                archive_options=storage_options(args.storage_options),
                checkpoint_file=args.checkpoint_file)
    if args.json:
        print(json.dumps(_result_json(result), indent=2))
        return 0
    print(f"policy {result.policy.describe()}; cutoff {_iso(result.cutoff)}")
    for d in result.decisions:
        verb = "drop" if d.drop and result.dry_run else "DROPPED" if d.drop else "keep"
        rows = "" if d.rows is None else f", {d.rows} events"
        print(f"  {verb:8} {d.partition}: {d.reason}{rows}")
    if result.dry_run:
        print(f"dry run: {len(result.to_drop)} partition(s) would be dropped")
    else:
        print(f"dropped {len(result.dropped)} partition(s)")
    return 0


def cmd_hold_add(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        hold_id = add_hold(conn, reason=args.reason, range_from=args.range_from,
                           range_to=args.range_to, table=args.table, record_id=args.record,
                           user_id=args.user, created_by=args.by)
    if args.json:
        print(json.dumps({"hold_id": hold_id, "placed": True}))
        return 0
    print(f"legal hold {hold_id} placed")
    return 0


def cmd_hold_remove(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        release_hold(conn, args.hold_id, reason=args.reason, released_by=args.by)
    if args.json:
        print(json.dumps({"hold_id": args.hold_id, "released": True}))
        return 0
    print(f"legal hold {args.hold_id} released")
    return 0


def cmd_hold_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        holds = list_holds(conn, include_released=args.all)
    if args.json:
        print(json.dumps([{"id": h.id, "kind": h.kind, "what": h.describe(),
                           "reason": h.reason, "created_by": h.created_by,
                           "created_at": _iso(h.created_at), "active": h.active,
                           "released_at": _iso(h.released_at)} for h in holds], indent=2))
        return 0
    if not holds:
        print("no legal holds")
    for h in holds:
        state = "" if h.active else f" (released {_iso(h.released_at)} by {h.released_by})"
        print(f"  {h.id}: {h.describe()}: {h.reason} [{h.created_by}]{state}")
    return 0


def cmd_partitions_ensure(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        result = ensure_partitions(conn, args.months_ahead)
    failed = bool(result.rows_in_default or result.overlapping)
    if args.json:
        print(json.dumps({"created": list(result.created),
                          "rows_in_default": list(result.rows_in_default),
                          "overlapping": list(result.overlapping)}))
        return 1 if failed else 0
    print(f"created {len(result.created)} partition(s)"
          + (f": {', '.join(result.created)}" if result.created else ""))
    for name in result.rows_in_default:
        print(f"  warning: {name} not created: rows for it are in the default partition")
    for name in result.overlapping:
        print(f"  warning: {name} not created: another partition overlaps it")
    return 1 if result.rows_in_default or result.overlapping else 0


def cmd_partitions_list(args: argparse.Namespace) -> int:
    with connect(args) as conn:
        parts = list_partitions(conn)
    if args.json:
        print(json.dumps([{"partition": p.name, "from": _iso(p.range_from),
                           "to": _iso(p.range_to), "default": p.is_default,
                           "estimated_rows": p.estimated_rows, "bytes": p.total_bytes}
                          for p in parts], indent=2))
        return 0
    for p in parts:
        span = "default" if p.is_default else f"{_iso(p.range_from)} .. {_iso(p.range_to)}"
        print(f"  {p.name}: {span}, ~{p.estimated_rows} rows, {p.total_bytes / 1e6:.1f} MB")
    return 0
