"""archive, verify-archive: months of the trail to Parquet, and their offline check."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from audit_mw.cli._connect import connect
from audit_mw.errors import ConfigurationError
from audit_mw.integrity.keys import KeyRing


def register(commands: Any) -> None:
    p = commands.add_parser(
        "archive", help="write complete, sealed months to the Parquet archive (a folder or "
                        "an fsspec URL such as s3://bucket/prefix); drops nothing")
    p.add_argument("url", metavar="URL")
    p.add_argument("--partition", action="append", default=None, metavar="NAME",
                   help="archive this partition (events_pYYYYMM); repeatable (default: every "
                        "month that is over, sealed and not archived yet)")
    add_storage_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_archive)

    p = commands.add_parser(
        "verify-archive",
        help="check a Parquet archive offline against the chain (no database); exit 0 valid, "
             "1 altered, 2 cannot verify")
    p.add_argument("url", metavar="URL")
    p.add_argument("--public-key", action="append", default=[], metavar="BASE64_OR_FILE",
                   help="Ed25519 public key the archive is signed with (also "
                        "$AUDIT_VERIFY_KEYS); repeatable")
    p.add_argument("--retention-file", metavar="FILE",
                   help="the retention file (CHECKPOINT_FILE.retention): every partition it "
                        "names as dropped must be in the archive")
    add_storage_option(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_verify_archive)


def add_storage_option(parser: argparse.ArgumentParser, flag: str = "--storage-option") -> None:
    """The repeatable ``KEY=VALUE`` option passed to the archive's fsspec filesystem."""
    parser.add_argument(flag, dest="storage_options", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="an fsspec option of the archive's filesystem (a JSON value or "
                             "text), e.g. client_kwargs='{\"endpoint_url\": \"http://...\"}'; "
                             "repeatable. Credentials are best left to the environment "
                             "(AWS_ACCESS_KEY_ID, ...)")


def storage_options(pairs: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs as fsspec options (values parsed as JSON when they are JSON)."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(f"--storage-option expects KEY=VALUE, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def cmd_archive(args: argparse.Namespace) -> int:
    from audit_mw.archive import archive_months  # noqa: PLC0415  (an optional extra)

    with connect(args) as conn:
        conn.autocommit = True  # each month is read in its own snapshot
        run = archive_months(conn, args.url, KeyRing.from_env(), partitions=args.partition,
                             storage_options=storage_options(args.storage_options))
    if args.json:
        print(json.dumps({
            "archived": [{"partition": m.partition, "url": m.url, "events": m.count,
                          "bytes": m.bytes, "sha256": m.sha256, "reused": m.reused}
                         for m in run.archived],
            "skipped": [{"partition": p, "reason": r} for p, r in run.skipped]}, indent=2))
        return 0
    for m in run.archived:
        verb = "verified (archived before)" if m.reused else "archived and verified"
        print(f"  {m.partition}: {m.count} events, {m.bytes} bytes, {verb}: {m.url}")
    for name, reason in run.skipped:
        print(f"  {name}: skipped: {reason}")
    print(f"archived {len(run.archived)} month(s)")
    return 0


def cmd_verify_archive(args: argparse.Namespace) -> int:
    from audit_mw.archive import verify_archive  # noqa: PLC0415  (an optional extra)
    from audit_mw.integrity.retention import read_retention_file  # noqa: PLC0415

    env = KeyRing.from_env()
    publics = [Path(v).read_text().strip() if Path(v).is_file() else v for v in args.public_key]
    keys = KeyRing.build(env.hmac_keys, public_keys=[*env.public_keys.values(), *publics])
    retained = read_retention_file(args.retention_file) if args.retention_file else []
    result = verify_archive(args.url, keys, retention=retained,
                            storage_options=storage_options(args.storage_options))
    if args.json:
        print(json.dumps(result.to_json(), indent=2))
        return result.exit_code
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    for reason in result.unverifiable:
        print(f"cannot verify: {reason}")
    if result.ok:
        print(f"ok: {result.months} month(s), {result.events} events verified against the "
              "chain's checkpoints; manifests and index authenticated")
    else:
        print(f"verify-archive: FAILED ({result.status})")
    return result.exit_code
