"""What never reaches the trail or the logs: secrets by key name and by value pattern.

Pure functions, no I/O. Every application event passes through :func:`clean_text` (for
log-injection safety) and a :class:`Redactor` before it is stored, spooled or logged.

Two rules, applied together:

- **by key**: a metadata key that names a secret has its value replaced by
  ``"[redacted]"``, whatever the value is (a string, a number, a nested object). A key is
  normalised first (lower case, ``camelCase`` split, everything but letters and digits
  dropped): it names a secret when the joined form *contains* one of
  :data:`SECRET_KEY_PARTS` (``password`` matches ``new_password``, ``passwordHash``,
  ``X-Api-Key`` matches ``apikey``), or when one of its *words* is one of
  :data:`SECRET_KEY_WORDS` (short names like ``ssn`` or ``pin`` are matched as whole words
  only, so ``classname`` or ``spinner`` are left alone).
- **by value**: in every string anywhere in an event (metadata values at any depth, list
  items, the reason, the user agent, resource ids, the attempted login name), and in
  integers in metadata, text that looks like a secret is replaced: JWTs, ``Bearer``/``Basic``
  credentials, private-key blocks, credentials in URLs, the token formats secret scanners
  know by their prefix (AWS, GitHub, GitLab, Stripe, Slack, Telegram, Google, OpenAI ...),
  ``password=...``-style pairs (a quoted value whole), card numbers (13 to 19 digits, with
  or without spaces or dashes, that pass the Luhn check) and US social security numbers
  written ``123-45-6789``. See :data:`DEFAULT_PATTERNS`.

A secret written free-form into a sentence ("my password is hunter2") cannot be recognised
by any rule; keep secrets out of free text. Extend the rules with :meth:`Redactor.extended`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

__all__ = [
    "DEFAULT_PATTERNS",
    "DEFAULT_REDACTOR",
    "REDACTED",
    "SECRET_KEY_PARTS",
    "SECRET_KEY_WORDS",
    "JSONValue",
    "Pattern",
    "Redactor",
    "clean_text",
    "luhn_valid",
]

JSONValue: TypeAlias = (
    "bool | int | float | str | list[JSONValue] | dict[str, JSONValue] | None"
)

#: What a value under a secret key becomes.
REDACTED: Final = "[redacted]"

#: Substrings of a normalised key (lower case, letters and digits only) that name a secret.
SECRET_KEY_PARTS: Final = frozenset({
    "password", "passwd", "passphrase", "passcode", "secret", "token", "authorization",
    "cookie", "apikey", "accesskey", "cardnumber", "creditcard", "privatekey", "credential",
    "sessionid", "sessionkey", "securitycode", "mfacode", "otpcode", "totp", "authcode",
    "recoverycode", "backupcode", "verificationcode", "pincode", "signingkey", "encryptionkey",
})

#: Whole words of a key that name a secret (too short to match as substrings).
SECRET_KEY_WORDS: Final = frozenset({
    "ssn", "cvv", "cvv2", "cvc", "pin", "pwd", "pan", "otp", "pass", "pw", "session", "sid",
    "mfa", "2fa", "jwt", "csrf", "xsrf", "hotp",
})

# How deep metadata may nest, and how many items a container may hold, before the rest is
# cut: an event is a record, not a data dump, and redaction must stay cheap.
MAX_DEPTH: Final = 8
MAX_ITEMS: Final = 256

# --- log-injection safety -----------------------------------------------------------------

# ANSI escape sequences (CSI, OSC and two-character escapes) are removed entirely; any other
# control character, the Unicode line and paragraph separators and the bidirectional
# overrides become U+FFFD, so a value can neither start a new log line nor repaint a terminal.
_ANSI_RE: Final = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"          # CSI ... final byte
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC ... BEL or ST
    r"|\x9b[0-?]*[ -/]*[@-~]"           # 8-bit CSI
    r"|\x1b[@-_]?"                      # other two-character escapes, or a lone ESC
)
# Lone surrogates (U+D800-U+DFFF) are replaced too: JSON and Python let them through, but
# they cannot be encoded as UTF-8, so an event holding one could be neither stored nor spooled.
_CONTROL_RE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069"
    "\ud800-\udfff]"
)


def clean_text(value: str) -> str:
    """``value`` without ANSI escapes and with every control character replaced by U+FFFD.

    CR, LF, TAB, NUL, DEL, C1 controls, U+2028/U+2029, bidi overrides and lone surrogates
    are all replaced: a cleaned value is always one line of printable text that encodes as
    UTF-8 and that PostgreSQL accepts (no NUL).
    """
    if value.isprintable():
        return value
    return _CONTROL_RE.sub("\ufffd", _ANSI_RE.sub("", value))


# --- value patterns -----------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (as card numbers do)."""
    total = 0
    for position, char in enumerate(reversed(digits)):
        number = ord(char) - 48
        if position % 2:
            number *= 2
            if number > 9:
                number -= 9
        total += number
    return total % 10 == 0


@dataclass(frozen=True, slots=True)
class Pattern:
    """A value rule: text matching ``regex`` is replaced by ``replace(match)``.

    ``replace`` returns the replacement text, or ``None`` to keep the match as it is (the
    card rule keeps digit runs that fail the Luhn check).
    """

    name: str
    regex: re.Pattern[str]
    replace: Callable[[re.Match[str]], str | None]

    def apply(self, text: str) -> str:
        def substitute(match: re.Match[str]) -> str:
            replacement = self.replace(match)
            return match.group(0) if replacement is None else replacement

        return self.regex.sub(substitute, text)


def _fixed(text: str) -> Callable[[re.Match[str]], str]:
    return lambda _match: text


def _card(match: re.Match[str]) -> str | None:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return "[redacted:card]"
    return None


def _keep_key(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def _keep_key_quoted(match: re.Match[str]) -> str:
    # The whole value goes, spaces included: "password": "hunter 2 x" leaves no " 2 x".
    value = match.group(3)
    quote = value[0] if value[:1] in ("\"", "'") else ""
    return f"{match.group(1)}{match.group(2)}{quote}{REDACTED}{quote}"


def _prefixed(name: str, regex: str) -> Pattern:
    return Pattern(name, re.compile(regex), _fixed(f"[redacted:{name}]"))


# Key names of secret pairs in free text (key=value, key: value, "key": "value").
_PAIR_KEYS: Final = (
    r"(?:new_?|old_?|current_?|confirm_?)?(?:password|passwd|pass|pwd|pw|passphrase|passcode"
    r"|secret(?:[_-]?key)?|api[_-]?key|api[_-]?secret|access[_-]?key(?:[_-]?id)?"
    r"|access[_-]?token|refresh[_-]?token|auth[_-]?token|id[_-]?token|token|client[_-]?secret"
    r"|private[_-]?key|session(?:[_-]?(?:id|key|token))?|sid|cookie|security[_-]?code"
    r"|mfa(?:[_-]?code)?|otp(?:[_-]?code)?|totp|pin(?:[_-]?code)?|cvv|cvc)"
)


#: The value rules applied to every string of an event, in this order.
DEFAULT_PATTERNS: Final = (
    # A JWT: base64url header that starts with '{"' (eyJ), payload, optional signature.
    Pattern("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*"),
            _fixed("[redacted:jwt]")),
    # HTTP credentials: "Bearer abc...", "Basic dXNlcjpwYXNz".
    Pattern("bearer", re.compile(r"(?i)\b(bearer|basic|token)(\s+)[A-Za-z0-9._~+/=-]{6,}"),
            _keep_key),
    # A private key block (its line breaks are U+FFFD by now), cut off or whole.
    Pattern("private_key", re.compile(
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----.*?"
        r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|$)", re.DOTALL),
        _fixed("[redacted:private_key]")),
    # Credentials in a URL: scheme://user:password@host keeps the user, not the password.
    Pattern("url_credentials",
            re.compile(r"(?i)\b([a-z][a-z0-9+.-]{1,20}://[^\s:/@?#]*:)[^\s@/?#]+(@)"),
            lambda m: f"{m.group(1)}{REDACTED}{m.group(2)}"),
    # Token formats secret scanners know by their prefix.
    _prefixed("aws_key", r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA"
                         r"|ASCA)[A-Z0-9]{16}\b"),
    _prefixed("github_token", r"\b(?:gh[pousr]_[A-Za-z0-9]{30,255}"
                              r"|github_pat_[A-Za-z0-9_]{22,255})\b"),
    _prefixed("gitlab_token", r"\bgl(?:pat|dt|ptt|rt|cbt)-[A-Za-z0-9_-]{20,}"),
    _prefixed("stripe_key", r"\b(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}\b"
                            r"|\bwhsec_[A-Za-z0-9]{20,}\b"),
    _prefixed("slack_token", r"\bxox[abposre]-[A-Za-z0-9-]{10,}"
                             r"|hooks\.slack\.com/services/[A-Za-z0-9/_-]+"),
    _prefixed("telegram_bot_token", r"\b[0-9]{8,10}:AA[A-Za-z0-9_-]{33}(?![A-Za-z0-9_-])"),
    _prefixed("google_api_key", r"\bAIza[0-9A-Za-z_-]{35}(?![A-Za-z0-9_-])"
                                r"|\bya29\.[0-9A-Za-z_-]{20,}"),
    _prefixed("api_key", r"\b(?:sk-(?:proj-|ant-|live-)?[A-Za-z0-9_-]{20,}"
                         r"|npm_[A-Za-z0-9]{36}|pypi-AgE[A-Za-z0-9_-]{50,}"
                         r"|SG\.[A-Za-z0-9_-]{22}\.[A-Za-z0-9_-]{43}"
                         r"|shp(?:at|ss|ca|pa)_[a-fA-F0-9]{32}|dop_v1_[a-f0-9]{64}"
                         r"|hvs\.[A-Za-z0-9_-]{24,}|sq0(?:atp|csp)-[A-Za-z0-9_-]{22,})"),
    # key=value / key: value / "key": "value" pairs whose key names a secret: the whole
    # value, quoted values with their spaces.
    Pattern(
        "secret_pair",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(" + _PAIR_KEYS + r"\"?)(\s*[=:]\s*)"
            r"(\"[^\"]*\"?|'[^']*'?|[^\s\"',;&}]+)"
        ),
        _keep_key_quoted,
    ),
    # Card numbers: 13-19 digits, optionally separated by single spaces or dashes, Luhn-valid.
    Pattern("card", re.compile(r"(?<![0-9])[0-9](?:[ -]?[0-9]){12,18}(?![0-9])"), _card),
    # US social security numbers in their usual written form.
    Pattern("ssn", re.compile(r"(?<![0-9])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9])"),
            _fixed("[redacted:ssn]")),
)

_WORD_SPLIT_RE: Final = re.compile(r"[^a-z0-9]+")
_CAMEL_RE: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def _key_words(key: str) -> list[str]:
    return [w for w in _WORD_SPLIT_RE.split(_CAMEL_RE.sub("_", key).lower()) if w]


@dataclass(frozen=True, slots=True)
class Redactor:
    """Key and value redaction rules; the defaults are :data:`DEFAULT_REDACTOR`.

    ``key_parts`` are matched as substrings of the normalised key, ``key_words`` as whole
    words, ``patterns`` are applied to every string (see the module docstring).
    """

    key_parts: frozenset[str] = SECRET_KEY_PARTS
    key_words: frozenset[str] = SECRET_KEY_WORDS
    patterns: tuple[Pattern, ...] = DEFAULT_PATTERNS
    _cache: dict[str, bool] = field(default_factory=dict, repr=False, compare=False)

    def extended(
        self,
        *,
        key_parts: Iterable[str] = (),
        key_words: Iterable[str] = (),
        patterns: Iterable[Pattern] = (),
    ) -> Redactor:
        """A redactor with these rules added to this one's.

        Key parts and words are normalised like keys (lower case, letters and digits).
        """
        return Redactor(
            key_parts=self.key_parts | {"".join(_key_words(p)) for p in key_parts},
            key_words=self.key_words | {w for k in key_words for w in _key_words(k)},
            patterns=(*self.patterns, *patterns),
        )

    def is_secret_key(self, key: str) -> bool:
        """Whether the metadata key ``key`` names a secret."""
        known = self._cache.get(key)
        if known is None:
            words = _key_words(key)
            joined = "".join(words)
            known = any(part in joined for part in self.key_parts) or any(
                word in self.key_words for word in words
            )
            if len(self._cache) < 4096:
                self._cache[key] = known
        return known

    def text(self, value: str) -> str:
        """``value`` cleaned (:func:`clean_text`) and with every value pattern applied."""
        value = clean_text(value)
        for pattern in self.patterns:
            value = pattern.apply(value)
        return value

    def optional_text(self, value: str | None) -> str | None:
        """:meth:`text` for an optional value."""
        return None if value is None else self.text(value)

    def metadata(self, value: Mapping[str, object]) -> dict[str, JSONValue]:
        """A JSON-ready copy of ``value`` with secret keys and secret-looking values redacted.

        Keys are cleaned and made strings; values that JSON cannot hold (dates, UUIDs,
        decimals, anything else) become their ``str()``, then pass the value rules; bytes
        become ``"[bytes]"``; non-finite floats become strings. Containers nested deeper
        than 8 levels or holding more than 256 items are cut, with ``"[truncated]"``.
        """
        return self._mapping(value, 0)

    def _mapping(self, value: Mapping[Any, object], depth: int) -> dict[str, JSONValue]:
        out: dict[str, JSONValue] = {}
        for index, (raw_key, item) in enumerate(value.items()):
            if index >= MAX_ITEMS:
                out["[truncated]"] = len(value) - MAX_ITEMS
                break
            key = self.text(raw_key if isinstance(raw_key, str) else str(raw_key))
            out[key] = REDACTED if self.is_secret_key(key) else self._value(item, depth + 1)
        return out

    def _value(self, value: object, depth: int) -> JSONValue:  # noqa: PLR0911 - one per type
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, int):
            # A card number passed as a number is still a card number.
            text = str(value)
            redacted = self.text(text)
            return value if redacted == text else redacted
        if isinstance(value, float):
            return value if math.isfinite(value) else str(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return "[bytes]"
        if depth >= MAX_DEPTH:
            return "[truncated]"
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, list | tuple | set | frozenset):
            items = list(value)
            out = [self._value(item, depth + 1) for item in items[:MAX_ITEMS]]
            if len(items) > MAX_ITEMS:
                out.append("[truncated]")
            return out
        return self.text(str(value))


#: The rules used unless an event is given others.
DEFAULT_REDACTOR: Final = Redactor()
