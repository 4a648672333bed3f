"""Helpers for the application-event tests: captured structlog output and canary secrets."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import structlog


@contextmanager
def captured_json_log() -> Iterator[io.StringIO]:
    """Route structlog through JSONRenderer into a string buffer for the block."""
    buffer = io.StringIO()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso"),
            structlog.processors.JSONRenderer(),
        ],
        logger_factory=structlog.WriteLoggerFactory(file=buffer),
        cache_logger_on_first_use=False,
    )
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


def log_records(buffer: io.StringIO) -> list[dict[str, Any]]:
    """Every line of the buffer parsed as exactly one JSON object (fails otherwise)."""
    records = []
    for line in buffer.getvalue().split("\n")[:-1]:
        record = json.loads(line)
        assert isinstance(record, dict), line
        records.append(record)
    return records


def _b64(data: dict[str, Any]) -> str:
    raw = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


CANARY_PASSWORD = "Canary-Pa55w0rd-q7x"
CANARY_TOKEN = "CanaryBearer0123456789abcdef"
CANARY_JWT_SIGNATURE = "CanaryJwtSig_9f8e7d6c5b4a"
CANARY_JWT = ".".join([
    _b64({"alg": "HS256", "typ": "JWT"}),
    _b64({"sub": "canary-subject", "exp": 4102444800}),
    CANARY_JWT_SIGNATURE,
])
CANARY_CARD = "4111111111111111"  # the Visa test number, Luhn-valid
CANARY_CARD_SPACED = "4111 1111 1111 1111"
CANARY_SSN = "078-05-1120"

#: What must never appear in the trail, the spool or the logs.
CANARIES = (
    CANARY_PASSWORD, CANARY_TOKEN, CANARY_JWT, CANARY_JWT_SIGNATURE, CANARY_JWT.split(".")[1],
    CANARY_CARD, CANARY_CARD_SPACED, "4111-1111-1111-1111", CANARY_SSN, "078051120",
)


def canary_metadata() -> dict[str, Any]:
    """Canaries under secret keys, under innocent keys, nested and in lists."""
    return {
        "password": CANARY_PASSWORD,
        "Authorization": f"Bearer {CANARY_TOKEN}",
        "note": f"tried with token {CANARY_JWT}",
        "payment": {"card_number": CANARY_CARD, "last_card": CANARY_CARD_SPACED,
                    "raw": int(CANARY_CARD), "cvv": 123},
        "profile": {"ssn": CANARY_SSN, "history": [f"ssn {CANARY_SSN}",
                                                  {"deep": {"apiKey": CANARY_TOKEN}}]},
        "headers": [f"authorization: Bearer {CANARY_TOKEN}", "cookie: sessionid=abc"],
        "form": f"user=alice&password={CANARY_PASSWORD}&card=4111-1111-1111-1111",
        "userPassword": CANARY_PASSWORD,
    }


def free_text_with_canaries() -> str:
    """A reason field that carries every canary in a recognisable form."""
    return (f"password={CANARY_PASSWORD} auth=Bearer {CANARY_TOKEN} jwt {CANARY_JWT} "
            f"card {CANARY_CARD_SPACED} / {CANARY_CARD} ssn {CANARY_SSN}")


def hits(text: str) -> list[str]:
    """The canaries found in ``text``."""
    return [canary for canary in CANARIES if canary in text]
