"""What both example apps share: tables, demo users, password hashing, sessions."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from audit_mw.capture import install, track

SQL_FILE = Path(__file__).with_name("shop.sql")
APP_ROLE = "shop_app"


@dataclass(frozen=True)
class DemoUser:
    email: str
    display_name: str
    password: str
    role: str


#: Printed by ``audit-mw demo``; only ever used against a throwaway demo database.
DEMO_USERS = (
    DemoUser("alice@example.com", "Alice (admin)", "alice-demo-password", "admin"),
    DemoUser("bob@example.com", "Bob", "bob-demo-password", "member"),
    DemoUser("carol@example.com", "Carol", "carol-demo-password", "member"),
)


def _statements() -> dict[str, str]:
    parts = re.split(r"^-- name: (\w+)\s*$", SQL_FILE.read_text(), flags=re.MULTILINE)
    return {name: body.strip() for name, body in zip(parts[1::2], parts[2::2], strict=True)}


_SQL = _statements()


def query(name: str) -> sql.SQL:
    """A named statement from ``shop.sql`` (the example's own file, never user input)."""
    return sql.SQL(_SQL[name])


# -- passwords: scrypt, salted, compared in constant time ----------------------------------

_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, **_SCRYPT)
    return "scrypt$" + base64.b64encode(salt).decode() + "$" + base64.b64encode(digest).decode()


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), **_SCRYPT)
    return hmac.compare_digest(candidate, base64.b64decode(digest))


#: Checked against when the account does not exist, so that timing does not tell.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def check_login(row: dict[str, Any] | None, password: str) -> str | None:
    """None when the login is good, else the reason it failed (for the audit trail only)."""
    if row is None:
        verify_password(password, _DUMMY_HASH)
        return "unknown_account"
    if not verify_password(password, str(row["password_hash"])):
        return "bad_password"
    return None


# -- sessions: in memory, enough for an example ----------------------------------------------


@dataclass(frozen=True)
class SessionUser:
    id: int
    email: str
    display_name: str
    role: str

    @property
    def audit_id(self) -> str:
        """How the user appears in the audit trail."""
        return f"user:{self.id}"


class Sessions:
    """Opaque random tokens mapped to users; a real app would keep them in a store."""

    def __init__(self) -> None:
        self._by_token: dict[str, SessionUser] = {}
        self._lock = threading.Lock()

    def create(self, user: SessionUser) -> str:
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._by_token[token] = user
        return token

    def get(self, token: str | None) -> SessionUser | None:
        if not token:
            return None
        with self._lock:
            return self._by_token.get(token)

    def drop(self, token: str | None) -> None:
        with self._lock:
            self._by_token.pop(token or "", None)


# -- database set-up ----------------------------------------------------------------------------


def setup_database(admin_dsn: str, *, app_role: str | None = APP_ROLE) -> str:
    """Install audit_mw, create and track the shop's tables, add the demo users.

    Connects with ``admin_dsn`` (a role that may create roles). With ``app_role``, creates
    that login role for the application (audit_writer to record events, audit_reader for
    the admin routes) and returns a DSN that logs in as it; with ``None``, the app uses
    ``admin_dsn`` itself. Safe to run more than once.
    """
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        if app_role is not None:
            exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s",
                                  [app_role]).fetchone()
            if not exists:
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(app_role)))
        install(conn, writer_roles=[app_role] if app_role else [],
                reader_roles=[app_role] if app_role else [])
        conn.execute(query("schema"))
        if app_role is not None:
            conn.execute(query("grant_app").format(role=sql.Identifier(app_role)))
        track(conn, "users", exclude=["password_hash"])
        track(conn, "orders")
        with conn.cursor() as cur:
            # Seeded by the set-up script: attributed as such in the trail.
            cur.execute("SELECT set_config('audit.user_id', 'setup:demo-seed', false)")
            for user in DEMO_USERS:
                cur.execute(query("insert_user"), {
                    "email": user.email, "display_name": user.display_name,
                    "password_hash": hash_password(user.password), "role": user.role})
            cur.execute("SELECT set_config('audit.user_id', '', false)")
    if app_role is None:
        return admin_dsn
    params = psycopg.conninfo.conninfo_to_dict(admin_dsn)
    params["user"] = app_role
    params.pop("password", None)
    return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})
