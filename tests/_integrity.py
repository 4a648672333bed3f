"""Helpers for the integrity tests: keys, a mixed trail, tampering as a superuser."""

from __future__ import annotations

import base64
import contextlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg

from audit_mw.capture.tracking import track
from audit_mw.integrity.keys import KeyRing

HMAC_SECRET = b"k" * 32
OTHER_SECRET = b"o" * 32


def hmac_keys(**extra: bytes) -> KeyRing:
    """A key ring with the current key ``k1`` (and any extra verification keys)."""
    return KeyRing.build({"k1": HMAC_SECRET, **extra}, current_kid="k1")


def env_for(keys: dict[str, bytes], current: str) -> dict[str, str]:
    """Environment variables holding these HMAC keys."""
    enc = {k: base64.b64encode(v).decode() for k, v in keys.items()}
    others = ",".join(f"{k}:{v}" for k, v in enc.items() if k != current)
    return {"AUDIT_HMAC_KEY": f"{current}:{enc[current]}", "AUDIT_HMAC_KEYS": others}


def app_event(conn: psycopg.Connection[Any], n: int) -> None:
    """An application event (login or failure) written straight into the trail."""
    conn.execute(
        "INSERT INTO audit.events (kind, action, app_user_id, event_id, success, reason,"
        " resource_type, resource_id, metadata, client_ip)"
        " VALUES ('auth', %s, %s, %s, %s, %s, 'user', %s, %s::jsonb, '203.0.113.7')",
        ["login" if n % 3 else "login_failed", f"user{n % 17}", uuid.uuid4(), n % 3 != 0,
         None if n % 3 else "bad_password", str(n % 17),
         f'{{"attempt": {n}, "score": 1.50, "tiny": 1e-7}}'])


def build_trail(
    conn: psycopg.Connection[Any], entries: int = 1000, *, per_txn: int = 10,
    tracker: Callable[[psycopg.Connection[Any], str], object] = track,
) -> None:
    """About ``entries`` events: inserts, updates and deletes of a tracked table, app events."""
    conn.execute("CREATE TABLE IF NOT EXISTS items (id int PRIMARY KEY, name text, price numeric,"
                 " tags text[], doc jsonb)")
    tracker(conn, "items")
    made = conn.execute("SELECT count(*) FROM audit.events").fetchone()
    count = int(made[0]) if made else 0
    n = count
    while count < entries:
        with conn.transaction():
            for _ in range(per_txn):
                n += 1
                step = n % 5
                if step in (0, 1):
                    conn.execute("INSERT INTO items VALUES (%s, %s, %s, %s, %s::jsonb)"
                                 " ON CONFLICT (id) DO UPDATE SET name = excluded.name",
                                 [n, f"item {n}", f"{n}.10", ["a", f"t{n}"],
                                  f'{{"n": {n}, "nested": {{"x": [1, 2.50, null]}}}}'])
                elif step == 2:
                    conn.execute("UPDATE items SET price = price + 1 WHERE id = %s", [n - 1])
                elif step == 3:
                    app_event(conn, n)
                else:
                    conn.execute("DELETE FROM items WHERE id = %s", [n - 3])
        made = conn.execute("SELECT count(*) FROM audit.events").fetchone()
        count = int(made[0]) if made else 0


@contextlib.contextmanager
def guards_off(conn: psycopg.Connection[Any], *tables: str) -> Iterator[None]:
    """Disable the append-only guards of ``tables`` (as a superuser), then restore them."""
    for table in tables:
        conn.execute(f"ALTER TABLE audit.{table} DISABLE TRIGGER {table}_append_only")
    try:
        yield
    finally:
        for table in tables:
            conn.execute(f"ALTER TABLE audit.{table} ENABLE ALWAYS TRIGGER {table}_append_only")


def event_at(conn: psycopg.Connection[Any], position: int) -> int:
    """The id of the event sealed at ``position``."""
    row = conn.execute("SELECT event_id FROM audit.chain WHERE position = %s",
                       [position]).fetchone()
    assert row is not None
    return int(row[0])
