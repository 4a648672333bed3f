"""Helpers for the archive tests: the example shop's trail over past months, keys, S3."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
from audit_mw_examples.shop import setup_database
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from audit_mw import _sql
from audit_mw.archive._format import canonical_texts
from audit_mw.capture.partitions import create_partition
from audit_mw.integrity.canonical import COLUMNS
from audit_mw.integrity.keys import KeyRing
from tests._integrity import HMAC_SECRET
from tests._retention import month_range

SIGNER = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
#: The archiver's keys: the HMAC key and the Ed25519 signing key.
KEYS = KeyRing.build({"k1": HMAC_SECRET}, current_kid="k1", signing_key=SIGNER)
#: An auditor's keys: the public key alone.
PUBLIC = KeyRing.build(public_keys=[SIGNER.public_key()])
HMAC_ONLY = KeyRing.build({"k1": HMAC_SECRET})
SHOP_MONTHS = ((2024, 1), (2024, 2), (2024, 3))
IPS = ("203.0.113.10", "198.51.100.7", "192.0.2.44")


def shop_trail(conn: psycopg.Connection[Any], dsn: str, per_month: int = 30) -> None:
    """The example shop's tables, tracked, with its demo users (this month, through the
    capture triggers); then months of 2024 written the way the shop writes them (orders
    created and updated by users, logins and failed logins from client addresses), at
    explicit past times, as a superuser."""
    setup_database(dsn, app_role=None)
    with conn.transaction():
        conn.execute("SELECT set_config('audit.user_id', 'user:2', true)")
        conn.execute("INSERT INTO orders (user_id, item, quantity, unit_price)"
                     " VALUES (2, 'live widget', 1, 3.50)")
    for year, month in SHOP_MONTHS:
        start, end = month_range(year, month)
        create_partition(conn, start, end)
        for n in range(per_month):
            at = start + dt.timedelta(hours=7 * n + 1, seconds=n)
            _shop_event(conn, at, year * 100 + month, n)


def _shop_event(conn: psycopg.Connection[Any], at: dt.datetime, tag: int, n: int) -> None:
    user = f"user:{n % 3 + 1}"
    ip = IPS[n % len(IPS)]
    request = str(uuid.uuid4())
    order = f"{tag}{n // 5:03d}"
    step = n % 5
    if step == 0:
        conn.execute(
            "INSERT INTO audit.events (occurred_at, kind, action, app_user_id, event_id,"
            " success, reason, resource_type, resource_id, client_ip, request_id)"
            " VALUES (%s, 'auth', 'login_failed', %s, %s, false, 'bad_password', 'user', %s,"
            " %s, %s)", [at, "bob@example.com", uuid.uuid4(), "bob@example.com", ip, request])
    elif step == 1:
        conn.execute(
            "INSERT INTO audit.events (occurred_at, kind, action, app_user_id, event_id,"
            " success, resource_type, resource_id, client_ip, request_id)"
            " VALUES (%s, 'auth', 'login', %s, %s, true, 'user', %s, %s, %s)",
            [at, user, uuid.uuid4(), user, ip, request])
    elif step == 2:
        conn.execute(
            "INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name,"
            " record_id, new_values, app_user_id, client_ip, request_id, db_role)"
            " VALUES (%s, 'data', 'INSERT', 'public', 'orders', %s, %s::jsonb, %s, %s, %s,"
            " current_user)",
            [at, order, f'{{"id": {order}, "item": "widget", "quantity": 2, '
                         f'"unit_price": 9.50, "status": "open"}}', user, ip, request])
    else:
        conn.execute(
            "INSERT INTO audit.events (occurred_at, kind, action, schema_name, table_name,"
            " record_id, old_values, new_values, changed_fields, app_user_id, client_ip,"
            " request_id, db_role)"
            " VALUES (%s, 'data', 'UPDATE', 'public', 'orders', %s, %s::jsonb, %s::jsonb,"
            " ARRAY['quantity'], %s, %s, %s, current_user)",
            [at, order, f'{{"quantity": {step - 1}}}', f'{{"quantity": {step}}}', user, ip,
             request])


#: The columns compared between the trail and the archive, as text (DuckDB and PostgreSQL
#: print jsonb the same way once it is text; timestamps in UTC).
def trail_rows(conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime
               ) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        "SELECT e.id, e.occurred_at, e.kind, e.action, e.table_name, e.record_id,"
        " e.old_values::text, e.new_values::text, e.app_user_id, host(e.client_ip),"
        " e.success, e.reason, c.position"
        " FROM audit.events e JOIN audit.chain c ON c.event_id = e.id"
        " WHERE e.occurred_at >= %s AND e.occurred_at < %s ORDER BY e.id", [start, end])]


def canonical_trail(conn: psycopg.Connection[Any], start: dt.datetime, end: dt.datetime
                    ) -> list[tuple[Any, ...]]:
    """Every column of the trail's sealed events in the range, as canonical text (what the
    chain hashes), with the chain position and hashes, ordered by id."""
    query = sql.SQL("SELECT c.position, c.content_hash, c.entry_hash, {columns}"
                    " FROM audit.events AS e JOIN audit.chain AS c ON c.event_id = e.id"
                    " WHERE e.occurred_at >= %s AND e.occurred_at < %s ORDER BY e.id").format(
                        columns=_sql.query("integrity", "canonical_columns"))
    return [(r[3], r[0], bytes(r[1]), bytes(r[2]), *r[4:])
            for r in conn.execute(query, [start, end])]


def canonical_archive(con: Any, start: dt.datetime, end: dt.datetime) -> list[tuple[Any, ...]]:
    """The same, read by DuckDB from the archive and turned into canonical text."""
    names = ", ".join(COLUMNS)
    rows = con.execute(f"SELECT {names}, chain_position, chain_content_hash,"
                       " chain_entry_hash FROM audit_archive"
                       " WHERE occurred_at >= ? AND occurred_at < ? ORDER BY id",
                       [start, end]).fetchall()
    out = []
    for row in rows:
        values = dict(zip((*COLUMNS, "p", "ch", "eh"), row, strict=True))
        out.append((values["id"], values["p"], bytes(values["ch"]), bytes(values["eh"]),
                    *canonical_texts(values)))
    return out


ARCHIVE_QUERY = (
    "SELECT id, occurred_at, kind, action, table_name, record_id, old_values, new_values,"
    " app_user_id, client_ip, success, reason, chain_position FROM audit_archive"
    " WHERE occurred_at >= ? AND occurred_at < ? ORDER BY id")


@contextmanager
def s3_server() -> Iterator[dict[str, Any]]:
    """An S3-compatible server (moto) on 127.0.0.1 with a bucket ``audit``; yields the
    fsspec storage options that reach it."""
    from moto.server import ThreadedMotoServer  # noqa: PLC0415

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    options = {"key": "testing", "secret": "testing",
               "client_kwargs": {"endpoint_url": f"http://{host}:{port}",
                                 "region_name": "us-east-1"}}
    try:
        import boto3  # noqa: PLC0415  (moto's own dependency)

        boto3.client("s3", endpoint_url=f"http://{host}:{port}", region_name="us-east-1",
                     aws_access_key_id="testing", aws_secret_access_key="testing",
                     ).create_bucket(Bucket="audit")
        yield options
    finally:
        server.stop()
