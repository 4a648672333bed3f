"""export, verify-export: hand an auditor a date range, and let them check it offline."""

from __future__ import annotations

import argparse
import getpass
import json
import os
from pathlib import Path
from typing import Any

from audit_mw.admin._access import Actor, TrailAccessAction, record
from audit_mw.admin.export import (
    EXPORT_KEY_ENV,
    KEY_ENV,
    export_key_from_env,
    export_public_keys_from_env,
    export_signing_key_from_env,
    verify_export,
    write_export,
)
from audit_mw.admin.query import parse_export_range
from audit_mw.cli._connect import connect
from audit_mw.errors import ConfigurationError
from audit_mw.integrity.keys import KeyRing


def register(commands: Any) -> None:
    p = commands.add_parser(
        "export", help="export the trail of a time range with its chain entries and a "
                       "signed manifest")
    p.add_argument("--from", dest="start", required=True, metavar="TIMESTAMP",
                   help="first instant included (ISO 8601 with a time zone)")
    p.add_argument("--to", dest="end", required=True, metavar="TIMESTAMP",
                   help="first instant excluded (ISO 8601 with a time zone)")
    p.add_argument("--format", choices=("ndjson", "csv"), default="ndjson")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_export)

    p = commands.add_parser(
        "verify-export",
        help="check an export file offline against the chain (no database); exit 0 valid, "
             "1 altered, 2 cannot verify")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--public-key", action="append", default=[], metavar="BASE64_OR_FILE",
                   help="Ed25519 public key the checkpoints are signed with (also "
                        "$AUDIT_VERIFY_KEYS); repeatable")
    p.add_argument("--export-public-key", action="append", default=[],
                   metavar="BASE64_OR_FILE",
                   help="Ed25519 public key of the export key the manifest is signed with "
                        "(also $AUDIT_EXPORT_PUBLIC_KEYS); repeatable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_verify_export)


def _cli_actor() -> Actor:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry in some containers
        user = "unknown"
    return Actor(user_id=f"cli:{user}", user_agent="audit-mw export")


def cmd_export(args: argparse.Namespace) -> int:
    export = parse_export_range([("from", args.start), ("to", args.end),
                                 ("format", args.format)])
    key = export_signing_key_from_env() or export_key_from_env()
    if key is None:
        raise ConfigurationError(
            f"exports are signed: set {EXPORT_KEY_ENV}=BASE64 (create one with `audit-mw "
            f"keygen --export`), or {KEY_ENV} for an HMAC manifest")
    target = Path(args.output)
    partial = target.with_name(target.name + ".partial")
    filters = {"from": export.start.isoformat(), "to": export.end.isoformat(),
               "format": export.format}
    actor = _cli_actor()
    with connect(args) as conn:
        record(conn, TrailAccessAction.EXPORT_STARTED, actor, success=True,
                    metadata={"endpoint": "cli export", "filters": filters})
        try:
            with open(partial, "wb") as out:
                stats = write_export(conn, export, key, out)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, target)
        record(conn, TrailAccessAction.EXPORTED, actor, success=True, metadata={
            "endpoint": "cli export", "filters": filters, "rows": stats.count,
            "sha256": stats.sha256})
    if args.json:
        print(json.dumps({"file": str(target), "count": stats.count, "sealed": stats.sealed,
                          "unsealed": stats.unsealed, "sha256": stats.sha256,
                          "first": stats.first, "last": stats.last}))
        return 0
    ids = (f"ids {stats.first['id']}..{stats.last['id']}"
           if stats.first and stats.last else "no entries")
    print(f"exported {stats.count} entries ({ids}) to {target}; {stats.sealed} sealed, "
          f"{stats.unsealed} not sealed yet; sha256 {stats.sha256}")
    return 0


def _key_text(value: str) -> str:
    """A public key given inline (base64) or as a file holding it."""
    path = Path(value)
    return path.read_text().strip() if path.is_file() else value


def cmd_verify_export(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        raise ConfigurationError(f"no such file: {path}")
    env = KeyRing.from_env()
    publics = [_key_text(v) for v in args.public_key]
    keys = KeyRing.build(env.hmac_keys, public_keys=[*env.public_keys.values(), *publics])
    export_publics: list[Any] = [*export_public_keys_from_env().values(),
                                 *(_key_text(v) for v in args.export_public_key)]
    result = verify_export(path, keys, export_public_keys=export_publics)
    manifest = result.manifest or {}
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return result.exit_code
    if result.ok:
        checkpoint = manifest.get("checkpoint") or {}
        chain = (f"{result.chain_checked} sealed entries verified against checkpoint "
                 f"{checkpoint.get('seq')}" if result.sealed else "no sealed entries")
        print(f"ok: {result.count} entries from {manifest.get('from')} to "
              f"{manifest.get('to')}; {chain}; {result.unsealed} not sealed yet; "
              f"status {result.status}")
        return result.exit_code
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    print(f"verify-export: FAILED ({result.status})")
    return result.exit_code
