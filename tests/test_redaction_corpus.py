"""A corpus of secrets as secret scanners know them: none reaches the table, the logs, the
spool or an export; look-alike non-secrets stay readable.

Each canary is a whole secret in a realistic setting (free text, a URL, a header, a JSON
fragment, a metadata value under a secret key or an innocent one).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg_pool import ConnectionPool

from audit_mw.admin.export import ExportSigningKey, write_export
from audit_mw.admin.query import parse_export_range
from audit_mw.events import EventSettings, log_auth_event, log_event
from audit_mw.events.spool import Spool
from tests._events import captured_json_log

pytestmark = pytest.mark.db

DEAD_DSN = "host=127.0.0.1 port=1 connect_timeout=1"
A36 = "Cnry0aB1cD2eF3gH4iJ5kL6mN7oP8qR9sT0u"  # 36 letters and digits
assert len(A36) == 36

#: (where it is said, the secret itself): the text logged carries the secret.
FREE_TEXT: list[tuple[str, str]] = [
    ("postgresql://app:{}@db.internal/shop", "S3cretPgCnry01"),
    ("redis://:{}@cache:6379/0", "RedisCnry02pw"),
    ("https://bob:{}@git.example.com/repo.git", "HttpsCnry03pw"),
    ("amqp://guest:{}@mq:5672", "AmqpCnry04pw"),
    ("aws key {}", "AKIAZ7CNRY0000005"[:4] + "Z7CNRY0000000005"),
    ("session key {}", "ASIAZ7CNRY0000000006"),
    ("token {} used", "ghp_" + A36),
    ("oauth {}", "gho_" + A36),
    ("app {}", "ghs_" + A36),
    ("pat {}", "github_pat_11ABCDEFG0Cnry09_" + A36),
    ("gitlab {}", "glpat-Cnry10xxxxxxxxxxxxxx"),
    ("stripe {}", "sk_live_Cnry11abcdefghijklmn"),
    ("restricted {}", "rk_live_Cnry12abcdefghijklmn"),
    ("test key {}", "sk_test_Cnry13abcdefghijklmn"),
    ("webhook secret {}", "whsec_Cnry14abcdefghijklmnopqrst"),
    ("slack {}", "xoxb-123456789012-Cnry15abcdefgh"),
    ("slack user {}", "xoxp-123456789012-Cnry16abcdefgh"),
    ("hook https://{}", "hooks.slack.com/services/T000/B000/Cnry17xxxx"),
    ("bot {}", "123456789:AA" + "Cnry18" + "x" * 27),
    ("google {}", "AIza" + "Cnry19" + "y" * 29),
    ("oauth access {}", "ya29.Cnry20zzzzzzzzzzzzzzzzzz"),
    ("openai {}", "sk-proj-Cnry21aaaaaaaaaaaaaaaaaaaa"),
    ("anthropic {}", "sk-ant-Cnry22bbbbbbbbbbbbbbbbbbbb"),
    ("npm {}", "npm_" + A36),
    ("sendgrid {}", "SG.Cnry23cccccccccccccccc." + "d" * 43),
    ("shopify {}", "shpat_" + "0123456789abcdef" * 2),
    ("digitalocean {}", "dop_v1_" + "ab" * 32),
    ("vault {}", "hvs.Cnry26eeeeeeeeeeeeeeeeeeee"),
    ("-----BEGIN RSA PRIVATE KEY-----\n{}\n-----END RSA PRIVATE KEY-----",
     "MIIEpAIBAAKCAQEACnry27RsaBody"),
    ("-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----",
     "MHcCAQEEICnry28EcBody"),
    ("-----BEGIN OPENSSH PRIVATE KEY-----\n{}\n", "b3BlbnNzaC1rZXktCnry29Cut"),
    ("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----", "MIIEvQIBADANCnry30Pk8"),
    ("jwt {}", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJDbnJ5MzEifQ.Cnry31SigPart"),
    ("Authorization: Bearer {}", "Cnry32BearerTokenValue"),
    ("password={} next", "Cnry33Pw"),
    ('{{"password": "{}"}}', "hunter 2 Cnry34"),
    ("pass: {}", "Cnry35Pass"),
    ("pw={}&user=alice", "Cnry36Pw"),
    ("mfa_code={}", "Cnry37Mfa"),
    ("totp: {}", "Cnry38Totp"),
    ("security_code={}", "Cnry39Sec"),
    ("session={}; path=/", "Cnry40Sess"),
    ("api_key={}", "Cnry41Api"),
    ("client_secret: '{}'", "Cnry42 with space"),
    ("cookie: {}", "Cnry43Cookie"),
]

#: Values under keys that name a secret: the whole value goes, whatever it is.
BY_KEY: dict[str, Any] = {
    "pass": "Cnry44 anything at all", "pw": "Cnry45", "session": "Cnry46",
    "mfa_code": 461_234_47, "totp": "Cnry48", "security_code": "Cnry49",
    "otp": "Cnry50", "pin": "Cnry51", "apiKey": "Cnry52", "client_secret": "Cnry53",
    "private_key": "Cnry54", "sessionToken": "Cnry55", "X-Auth-Token": "Cnry56",
    "recovery_code": ["Cnry57a", "Cnry57b"], "passcode": {"value": "Cnry58"},
    "credentials": {"user": "u", "secret": "Cnry59"},
}

#: What looks like a secret to a careless rule, and must stay readable.
LOOK_ALIKES = [
    "ORD-2024-000123", "123e4567-e89b-12d3-a456-426614174000",
    "2024-03-01T12:00:00.123456Z", "INV/2024/0042", "v1.2.3", "10.0.0.1",
    "3f786850e387550fdab836ed7e6dc881de23001b", "passenger count 3", "compass heading 270",
    "tokens used: 1200", "session_count: 4", "https://example.com/path?x=1",
    "time 12:34:56", "SKU AK-1234", "+1-555-0100",
]


def _secrets() -> list[str]:
    found = [secret for _, secret in FREE_TEXT]
    found += ["Cnry44", "Cnry45", "Cnry46", "46123447", "Cnry48", "Cnry49", "Cnry50",
              "Cnry51", "Cnry52", "Cnry53", "Cnry54", "Cnry55", "Cnry56", "Cnry57a",
              "Cnry57b", "Cnry58", "Cnry59", " 2 Cnry34", "with space"]
    return found


def _hits(text: str) -> list[str]:
    return [s for s in _secrets() if s in text]


def _log_all(db: Any, settings: EventSettings) -> None:
    for template, secret in FREE_TEXT:
        text = template.format(secret)
        log_event(db, "config_changed", reason=text, resource_id=text[:200],
                  metadata={"note": text, "list": [text], "nested": {"deep": text},
                            "order": LOOK_ALIKES}, settings=settings)
    log_event(db, "config_changed", metadata=BY_KEY, settings=settings)
    log_auth_event(db, "login_failed", user_id=FREE_TEXT[6][1], settings=settings)


def test_the_canary_corpus_never_reaches_the_trail_the_logs_the_spool_or_exports(
    app_dsn: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    assert len(_secrets()) >= 50
    spool = Spool(tmp_path / "spool.jsonl")
    with captured_json_log() as log:
        with ConnectionPool(app_dsn, min_size=1, max_size=2) as pool:
            _log_all(pool, EventSettings(timeout=2))
        with ConnectionPool(DEAD_DSN, min_size=0, max_size=1) as dead:
            _log_all(dead, EventSettings(spool=spool, timeout=0.2))
    logged = log.getvalue()
    spooled = spool.path.read_text()
    row = conn.execute("SELECT json_agg(e)::text FROM audit.events AS e").fetchone()
    assert row is not None
    trail = str(row[0])

    signer = ExportSigningKey(Ed25519PrivateKey.from_private_bytes(b"\x05" * 32))
    exports = []
    for fmt in ("ndjson", "csv"):
        path = tmp_path / f"export.{fmt}"
        export = parse_export_range([("from", "2000-01-01T00:00:00Z"),
                                     ("to", "2100-01-01T00:00:00Z"), ("format", fmt)])
        with path.open("wb") as out:
            write_export(conn, export, signer, out)
        exports.append(path.read_text())

    for where, text in [("trail", trail), ("log", logged), ("spool", spooled),
                        ("ndjson export", exports[0]), ("csv export", exports[1])]:
        assert _hits(text) == [], where
    # What only looks like a secret is kept, in the trail and in the log.
    for text in (trail, logged):
        for value in LOOK_ALIKES:
            assert json.dumps(value)[1:-1] in text, value
    stored = conn.execute("SELECT count(*) FROM audit.events WHERE kind = 'admin'").fetchone()
    assert stored == (len(FREE_TEXT) + 1,)
    assert len(spool.read_all()) == len(FREE_TEXT) + 2
    assert uuid.UUID(json.loads(spool.read_all()[0])["event_id"])
