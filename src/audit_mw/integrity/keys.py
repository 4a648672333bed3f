"""Checkpoint keys, read from the environment. Keys never reach the database or the logs.

- ``AUDIT_HMAC_KEY=kid:BASE64``: the key the sealer authenticates new checkpoints with.
- ``AUDIT_HMAC_KEYS=kid:BASE64,kid:BASE64``: older keys, still accepted when verifying
  (rotation: make the new key ``AUDIT_HMAC_KEY`` and move the old one here).
- ``AUDIT_SIGNING_KEY=BASE64``: optional Ed25519 private key (32 raw bytes); checkpoints are
  then also signed, and an auditor verifies them with the public key alone.
- ``AUDIT_VERIFY_KEYS=BASE64,BASE64``: Ed25519 public keys; when set, ``verify`` requires
  every checkpoint to carry a valid signature by one of them.

A key id is 1 to 64 characters of ``A-Z a-z 0-9 . _ -``; a secret is at least 16 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Protocol, TypeVar

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from audit_mw.errors import ConfigurationError

__all__ = [
    "KeyRing",
    "generate_hmac_key",
    "generate_signing_key",
    "public_key_id",
]

_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_SECRET = 16


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigurationError(f"{what} is not valid base64") from None


def _parse_hmac(spec: str, variable: str) -> tuple[str, bytes]:
    kid, sep, secret = spec.strip().partition(":")
    if not sep or not _KEY_ID.match(kid):
        raise ConfigurationError(
            f"{variable}: expected KEY_ID:BASE64_SECRET (key id of 1-64 letters, digits, "
            "'.', '_' or '-')")
    raw = _b64(secret, f"{variable} (key {kid})")
    if len(raw) < MIN_SECRET:
        raise ConfigurationError(f"{variable}: key {kid} is shorter than {MIN_SECRET} bytes")
    return kid, raw


def public_key_id(public: Ed25519PublicKey) -> str:
    """A short, stable id for an Ed25519 public key: ``ed25519:`` and 16 hex digits."""
    raw = public.public_bytes_raw()
    return "ed25519:" + hashlib.sha256(raw).hexdigest()[:16]


def _public_from_text(text: str) -> Ed25519PublicKey:
    raw = _b64(text, "Ed25519 public key")
    if len(raw) != 32:
        raise ConfigurationError("an Ed25519 public key is 32 bytes (base64 of the raw key)")
    return Ed25519PublicKey.from_public_bytes(raw)


@dataclass(frozen=True)
class KeyRing:
    """The keys a sealer or verifier holds. ``repr`` shows key ids only."""

    hmac_keys: Mapping[str, bytes] = field(default_factory=dict, repr=False)
    signing_kid: str | None = None
    signing_key: Ed25519PrivateKey | None = field(default=None, repr=False)
    public_keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict, repr=False)
    current_kid: str | None = None

    def __repr__(self) -> str:
        return (f"KeyRing(hmac={sorted(self.hmac_keys)}, current={self.current_kid}, "
                f"signing={self.signing_kid}, public={sorted(self.public_keys)})")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Read the keys from ``environ`` (default ``os.environ``); see the module docs."""
        env = os.environ if environ is None else environ
        hmac_keys: dict[str, bytes] = {}
        current = None
        if env.get("AUDIT_HMAC_KEY", "").strip():
            current, secret = _parse_hmac(env["AUDIT_HMAC_KEY"], "AUDIT_HMAC_KEY")
            hmac_keys[current] = secret
        for spec in filter(str.strip, env.get("AUDIT_HMAC_KEYS", "").split(",")):
            kid, secret = _parse_hmac(spec, "AUDIT_HMAC_KEYS")
            if kid in hmac_keys and hmac_keys[kid] != secret:
                raise ConfigurationError(f"key id {kid} is given twice with different secrets")
            hmac_keys[kid] = secret
        signing = None
        if env.get("AUDIT_SIGNING_KEY", "").strip():
            raw = _b64(env["AUDIT_SIGNING_KEY"], "AUDIT_SIGNING_KEY")
            if len(raw) != 32:
                raise ConfigurationError(
                    "AUDIT_SIGNING_KEY: an Ed25519 private key is 32 bytes (base64 of the seed)")
            signing = Ed25519PrivateKey.from_private_bytes(raw)
        publics = [_public_from_text(t)
                   for t in env.get("AUDIT_VERIFY_KEYS", "").split(",") if t.strip()]
        return cls.build(hmac_keys, current_kid=current, signing_key=signing,
                         public_keys=publics)

    @classmethod
    def build(
        cls,
        hmac_keys: Mapping[str, bytes] | None = None,
        *,
        current_kid: str | None = None,
        signing_key: Ed25519PrivateKey | None = None,
        public_keys: Iterable[Ed25519PublicKey | str] = (),
    ) -> KeyRing:
        """A key ring from values (``public_keys`` as objects or base64 text)."""
        keys = dict(hmac_keys or {})
        for kid, secret in keys.items():
            if not _KEY_ID.match(kid):
                raise ConfigurationError(f"invalid key id {kid!r}")
            if len(secret) < MIN_SECRET:
                raise ConfigurationError(f"key {kid} is shorter than {MIN_SECRET} bytes")
        if current_kid is not None and current_kid not in keys:
            raise ConfigurationError(f"current key {current_kid} is not among the HMAC keys")
        publics = {}
        for key in public_keys:
            obj = _public_from_text(key) if isinstance(key, str) else key
            publics[public_key_id(obj)] = obj
        signing_kid = None
        if signing_key is not None:
            signing_kid = public_key_id(signing_key.public_key())
        return cls(keys, signing_kid, signing_key, publics, current_kid)

    def require_sealing_key(self) -> tuple[str, bytes]:
        """The key id and secret to authenticate a new checkpoint with, or a clear error."""
        if self.current_kid is None:
            raise ConfigurationError(
                "no checkpoint key: set AUDIT_HMAC_KEY=KEY_ID:BASE64_SECRET (create one with "
                "`audit-mw keygen`); sealing never produces an unauthenticated chain")
        return self.current_kid, self.hmac_keys[self.current_kid]

    def mac(self, kid: str, message: bytes) -> bytes | None:
        """HMAC-SHA256 of ``message`` under key ``kid``; ``None`` when the key is unknown."""
        secret = self.hmac_keys.get(kid)
        return None if secret is None else hmac.digest(secret, message, "sha256")

    def sign(self, message: bytes) -> tuple[str, bytes] | None:
        """An Ed25519 signature of ``message``, when a signing key is configured."""
        if self.signing_key is None or self.signing_kid is None:
            return None
        return self.signing_kid, self.signing_key.sign(message)

    def check_signature(self, kid: str, message: bytes, signature: bytes) -> bool | None:
        """True/False for a known public key, ``None`` when ``kid`` is not one of ours."""
        public = self.public_keys.get(kid)
        if public is None:
            return None
        try:
            public.verify(signature, message)
        except InvalidSignature:
            return False
        return True


class SignedRecord(Protocol):
    """A checkpoint-like record: its message names its HMAC key, and it carries the MAC and
    the optional Ed25519 signature of that message."""

    __dataclass_fields__: ClassVar[dict[str, Any]]

    @property
    def key_id(self) -> str: ...
    @property
    def mac(self) -> bytes: ...
    @property
    def sig_key_id(self) -> str | None: ...
    @property
    def signature(self) -> bytes | None: ...
    def message(self) -> bytes: ...


_Record = TypeVar("_Record", bound=SignedRecord)


def authenticate(record: _Record, keys: KeyRing) -> _Record:
    """``record`` under the current HMAC key, with its MAC (and signature, if a key is set)."""
    kid, _ = keys.require_sealing_key()
    unsigned = replace(record, key_id=kid)
    message = unsigned.message()
    mac = keys.mac(kid, message)
    assert mac is not None  # require_sealing_key guarantees the key  # noqa: S101
    signed = keys.sign(message)
    return replace(unsigned, mac=mac, sig_key_id=signed[0] if signed else None,
                   signature=signed[1] if signed else None)


def authentication_problem(record: SignedRecord, keys: KeyRing) -> tuple[str, str] | None:
    """``(kind, what)`` when ``record`` fails authentication with ``keys``, else ``None``.

    With HMAC keys the MAC must verify; with public keys the signature must too. A key id
    that is not configured is ``unknown_key``: never accepted. Otherwise ``bad_checkpoint``.
    """
    message = record.message()
    if keys.hmac_keys:
        expected = keys.mac(record.key_id, message)
        if expected is None:
            return "unknown_key", f"unknown HMAC key id {record.key_id!r}"
        if not hmac.compare_digest(expected, record.mac):
            return "bad_checkpoint", "HMAC does not match"
    if keys.public_keys:
        if record.signature is None or record.sig_key_id is None:
            return "bad_checkpoint", "not signed"
        good = keys.check_signature(record.sig_key_id, message, record.signature)
        if good is None:
            return "unknown_key", f"unknown signing key {record.sig_key_id!r}"
        if not good:
            return "bad_checkpoint", "Ed25519 signature is invalid"
    return None


def generate_hmac_key(kid: str) -> str:
    """A new ``AUDIT_HMAC_KEY`` value: ``kid:`` and 32 random bytes in base64."""
    if not _KEY_ID.match(kid):
        raise ConfigurationError(f"invalid key id {kid!r}")
    return f"{kid}:{base64.b64encode(secrets.token_bytes(32)).decode()}"


def generate_signing_key() -> tuple[str, str]:
    """A new Ed25519 key pair as ``(private, public)`` base64 text."""
    private = Ed25519PrivateKey.generate()
    return (base64.b64encode(private.private_bytes_raw()).decode(),
            base64.b64encode(private.public_key().public_bytes_raw()).decode())
