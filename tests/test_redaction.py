"""Redaction and cleaning rules (pure)."""

from __future__ import annotations

import json
import re
from datetime import date
from decimal import Decimal

import pytest

from audit_mw.events.redaction import (
    DEFAULT_REDACTOR,
    REDACTED,
    Pattern,
    Redactor,
    clean_text,
    luhn_valid,
)
from tests._events import CANARIES, canary_metadata, free_text_with_canaries, hits


@pytest.mark.parametrize(
    "key",
    ["password", "new_password", "passwordHash", "PASSWD", "client_secret", "X-Api-Key",
     "api_key", "access_token", "refreshToken", "Authorization", "Set-Cookie", "card_number",
     "creditCard", "cvv", "CVC", "ssn", "user_ssn", "pin", "otp", "sessionId", "private_key",
     "credentials", "pwd"],
)
def test_secret_keys_are_redacted(key: str) -> None:
    assert DEFAULT_REDACTOR.is_secret_key(key)
    assert DEFAULT_REDACTOR.metadata({key: {"anything": 1}}) == {key: REDACTED}


@pytest.mark.parametrize(
    "key", ["user", "classname", "spinner", "lesson", "expansion", "ip", "role", "card_brand"]
)
def test_innocent_keys_are_kept(key: str) -> None:
    assert not DEFAULT_REDACTOR.is_secret_key(key)
    assert DEFAULT_REDACTOR.metadata({key: "value"}) == {key: "value"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("4111111111111111", "[redacted:card]"),
        ("4111 1111 1111 1111", "[redacted:card]"),
        ("4111-1111-1111-1111", "[redacted:card]"),
        ("card 5500005555555559 ok", "card [redacted:card] ok"),
        ("378282246310005", "[redacted:card]"),  # 15-digit Amex test number
        ("4111111111111112", "4111111111111112"),  # fails Luhn: not a card
        ("order 123456789012", "order 123456789012"),  # 12 digits: too short
        ("ssn 078-05-1120.", "ssn [redacted:ssn]."),
        ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: Bearer [redacted]"),
        ("basic dXNlcjpwYXNzd29yZA==", "basic [redacted]"),
        ("password=hunter22&x=1", "password=[redacted]&x=1"),
        ('{"api_key": "k-123456"}', '{"api_key": "[redacted]"}'),
        ("no secrets here", "no secrets here"),
    ],
)
def test_value_patterns(text: str, expected: str) -> None:
    assert DEFAULT_REDACTOR.text(text) == expected


def test_jwt_is_redacted_anywhere() -> None:
    from tests._events import CANARY_JWT  # noqa: PLC0415

    assert DEFAULT_REDACTOR.text(f"x {CANARY_JWT} y") == "x [redacted:jwt] y"


def test_luhn() -> None:
    assert luhn_valid("4111111111111111")
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")


def test_canaries_never_survive() -> None:
    stored = json.dumps(DEFAULT_REDACTOR.metadata(canary_metadata()))
    assert hits(stored) == []
    assert hits(DEFAULT_REDACTOR.text(free_text_with_canaries())) == []
    # the canaries are really in the input
    assert len(hits(json.dumps(canary_metadata()) + free_text_with_canaries())) >= len(CANARIES) - 1


def test_metadata_types_and_limits() -> None:
    deep: dict[str, object] = {"v": 1}
    for _ in range(12):
        deep = {"n": deep}
    out = DEFAULT_REDACTOR.metadata({
        "when": date(2024, 1, 2), "amount": Decimal("1.50"), "blob": b"\x00\x01",
        "nan": float("nan"), "ok": 1.5, "flag": True, "none": None,
        7: "int key",  # type: ignore[dict-item]  # non-str keys are made strings
        "set": {"a"}, "deep": deep, "many": list(range(300)),
    })
    assert out["when"] == "2024-01-02"
    assert out["amount"] == "1.50"
    assert out["blob"] == "[bytes]"
    assert out["nan"] == "nan"
    assert out["ok"] == 1.5
    assert out["flag"] is True
    assert out["none"] is None
    assert out["7"] == "int key"
    assert out["set"] == ["a"]
    assert "[truncated]" in json.dumps(out["deep"])
    many = out["many"]
    assert isinstance(many, list)
    assert len(many) == 257
    assert many[-1] == "[truncated]"
    json.dumps(out, allow_nan=False)


@pytest.mark.parametrize(
    "value",
    ["a\r\nb", "a\nb", "a\rb", "\x1b[31mred\x1b[0m", "x\u2028y\u2029z", "nul\x00", "del\x7f",
     "c1\x85", "bidi\u202eevil", "osc\x1b]0;title\x07end", "tab\there", "esc\x1bc"],
)
def test_clean_text_leaves_one_printable_line(value: str) -> None:
    cleaned = clean_text(value)
    assert cleaned.isprintable()
    assert "\x1b" not in cleaned
    assert len(cleaned.splitlines()) <= 1


def test_clean_text_keeps_printable_text() -> None:
    assert clean_text("Mozilla/5.0 (X11; Linux) ünïcødé ✓") == "Mozilla/5.0 (X11; Linux) ünïcødé ✓"
    assert clean_text("\x1b[1;31mbold\x1b[0m") == "bold"


def test_extended_redactor() -> None:
    employee = re.compile(r"\bEMP-\d{6}\b")
    redactor = DEFAULT_REDACTOR.extended(
        key_parts=["internal-note"], key_words=["dob"],
        patterns=[Pattern("employee", employee, lambda _m: "[redacted:employee]")],
    )
    assert redactor.metadata({"internalNote": "x", "dob": "1990", "dobby": "elf",
                              "text": "EMP-123456", "password": "p"}) == {
        "internalNote": REDACTED, "dob": REDACTED, "dobby": "elf",
        "text": "[redacted:employee]", "password": REDACTED,
    }
    assert not DEFAULT_REDACTOR.is_secret_key("dob")
    assert Redactor(key_parts=frozenset(), key_words=frozenset(), patterns=()).metadata(
        {"password": "p"}) == {"password": "p"}
