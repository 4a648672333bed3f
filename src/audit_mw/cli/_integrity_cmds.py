"""seal, verify, keygen."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import structlog

from audit_mw.capture.partitions import ensure_partitions_quietly
from audit_mw.cli._connect import connect
from audit_mw.errors import AuditError, SchemaError, VerificationError
from audit_mw.integrity.chain import VerifyResult
from audit_mw.integrity.checkpoints import JsonlSink, StructlogSink
from audit_mw.integrity.keys import KeyRing, generate_hmac_key, generate_signing_key
from audit_mw.integrity.runs import record_failure, record_run
from audit_mw.integrity.seal import seal
from audit_mw.integrity.verify import verify


def register(commands: Any) -> None:
    p = commands.add_parser(
        "seal", help="chain committed audit events and issue a signed checkpoint")
    p.add_argument("--checkpoint-file", default=os.environ.get("AUDIT_CHECKPOINT_FILE"),
                   help="append checkpoints to this JSON-lines file "
                        "(default: $AUDIT_CHECKPOINT_FILE)")
    p.add_argument("--batch-size", type=int, default=50_000,
                   help="events per checkpoint (default 50000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_seal)

    p = commands.add_parser(
        "verify", help="recompute the chain; exit 0 valid, 1 tampered, 2 could not verify")
    p.add_argument("--checkpoint-file", default=os.environ.get("AUDIT_CHECKPOINT_FILE"),
                   help="checkpoint copies kept outside the database; without them a "
                        "truncated tail or a restored backup cannot be seen")
    p.add_argument("--public-key", action="append", default=[], metavar="BASE64_OR_FILE",
                   help="Ed25519 public key; checkpoints must be signed by it; repeatable")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--record", action="store_true",
                   help="append the result to audit.verification_runs (needs the schema "
                        "owner's role); the admin routes' /verify shows the latest run")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="show a progress bar (default: when stderr is a terminal)")
    p.set_defaults(handler=cmd_verify)

    p = commands.add_parser("keygen", help="print a new checkpoint key")
    p.add_argument("--kid", default="k1", help="key id for the HMAC key (default k1)")
    p.add_argument("--ed25519", action="store_true",
                   help="print an Ed25519 signing key pair instead")
    p.add_argument("--export", action="store_true",
                   help="print an Ed25519 export key pair (AUDIT_EXPORT_KEY for the web "
                        "process, AUDIT_EXPORT_PUBLIC_KEYS for auditors)")
    p.add_argument("--json", action="store_true", help="print the variables as one JSON object")
    p.set_defaults(handler=cmd_keygen)


def _error_log() -> Any:
    # One JSON object per line on stderr: stdout stays clean for --json, and an alert can
    # match the event name.
    return structlog.wrap_logger(
        structlog.PrintLogger(sys.stderr),
        processors=[structlog.processors.add_log_level,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.JSONRenderer()])


def cmd_seal(args: argparse.Namespace) -> int:
    keys = KeyRing.from_env()
    keys.require_sealing_key()
    sinks: list[Any] = [StructlogSink(_error_log())]
    if args.checkpoint_file:
        sinks.insert(0, JsonlSink(args.checkpoint_file))
    else:
        print("audit-mw: warning: no --checkpoint-file: checkpoints are kept in the database "
              "and the log only", file=sys.stderr)
    with connect(args) as conn:
        result = seal(conn, keys, sinks=sinks, batch_size=args.batch_size)
        ensure_partitions_quietly(conn)
    if args.json:
        print(json.dumps({"busy": result.busy, "sealed": result.sealed,
                          "checkpoints": [cp.seq for cp in result.checkpoints],
                          "head_position": result.head_position,
                          "chain_id": result.chain_id}))
        return 0
    if result.busy:
        print("another sealer is running; nothing done")
        return 0
    print(f"sealed {result.sealed} entries in {len(result.checkpoints)} checkpoint(s); "
          f"chain head at position {result.head_position}")
    return 0


def _public_keys(values: list[str]) -> list[str]:
    keys = []
    for value in values:
        path = Path(value)
        keys.append(path.read_text().strip() if path.is_file() else value)
    return keys


class _Bar:
    def __init__(self) -> None:
        self.shown = False

    def __call__(self, done: int, total: int) -> None:
        width = 30
        part = done / total if total else 1.0
        filled = int(width * min(part, 1.0))
        sys.stderr.write(f"\rverifying [{'#' * filled}{'.' * (width - filled)}] "
                         f"{done}/{total} entries")
        sys.stderr.flush()
        self.shown = True


def cmd_verify(args: argparse.Namespace) -> int:
    env_keys = KeyRing.from_env()
    keys = KeyRing.build(env_keys.hmac_keys,
                         public_keys=[*env_keys.public_keys.values(),
                                      *_public_keys(args.public_key)])
    show = sys.stderr.isatty() if args.progress is None else args.progress
    bar = _Bar() if show else None
    started_at = dt.datetime.now(dt.UTC)
    with connect(args) as conn:
        # The result is recorded after it is reported, so that a failure to record it never
        # hides a broken chain.
        try:
            result = verify(conn, keys, checkpoint_file=args.checkpoint_file, progress=bar)
        except (VerificationError, SchemaError) as exc:
            if args.record:
                record_failure(conn, exc, started_at=started_at)
            raise
        if bar is not None and bar.shown:
            sys.stderr.write("\n")
        if not result.valid:
            _error_log().error("audit_verify_failed", **result.to_json())
        if args.json:
            print(json.dumps(result.to_json(), indent=2))
        else:
            _print_result(result)
        if args.record:
            try:
                run_id = record_run(conn, result, started_at=started_at)
            except AuditError as exc:
                print(f"audit-mw: error: {exc}", file=sys.stderr)
                return result.exit_code or 2
            if not args.json:
                print(f"  recorded as verification run {run_id}")
    return result.exit_code


def _print_result(result: VerifyResult) -> None:
    print(f"status: {result.status}")
    print(f"  {result.detail}")
    if not result.valid:
        print(f"  first bad entry: id {result.first_bad_id}, position "
              f"{result.first_bad_position}, kind {result.kind}")
    print(f"  entries checked: {result.checked}; checkpoints: {result.checkpoints}; "
          f"not sealed yet: {result.unsealed}")
    for warning in result.warnings:
        print(f"  warning: {warning}")


def cmd_keygen(args: argparse.Namespace) -> int:
    if args.export:
        private, public = generate_signing_key()
        found = {"AUDIT_EXPORT_KEY": private, "AUDIT_EXPORT_PUBLIC_KEYS": public}
    elif args.ed25519:
        private, public = generate_signing_key()
        found = {"AUDIT_SIGNING_KEY": private, "AUDIT_VERIFY_KEYS": public}
    else:
        found = {"AUDIT_HMAC_KEY": generate_hmac_key(args.kid)}
    if args.json:
        print(json.dumps(found))
        return 0
    for name, value in found.items():
        print(f"{name}={value}")
    return 0
