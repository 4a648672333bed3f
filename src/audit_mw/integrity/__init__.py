"""Tamper evidence: the hash chain over the audit trail, its checkpoints and its verifier.

See ``docs/integrity.md``. The modules: :mod:`~audit_mw.integrity.canonical` (the byte
encoding), :mod:`~audit_mw.integrity.chain` (the pure verification core),
:mod:`~audit_mw.integrity.keys`, :mod:`~audit_mw.integrity.checkpoints` (checkpoints and
their sinks), :mod:`~audit_mw.integrity.seal` and :mod:`~audit_mw.integrity.verify`
(database shells).
"""

from audit_mw.integrity.canonical import canonical_text, entry_hash, jsonb_text, parse_json
from audit_mw.integrity.chain import Finding, VerifyResult, verify_entries
from audit_mw.integrity.checkpoints import (
    Checkpoint,
    JsonlSink,
    StructlogSink,
    read_checkpoint_file,
)
from audit_mw.integrity.keys import KeyRing, generate_hmac_key, generate_signing_key
from audit_mw.integrity.seal import BackgroundSealer, SealResult, seal
from audit_mw.integrity.verify import verify

__all__ = [
    "BackgroundSealer",
    "Checkpoint",
    "Finding",
    "JsonlSink",
    "KeyRing",
    "SealResult",
    "StructlogSink",
    "VerifyResult",
    "canonical_text",
    "entry_hash",
    "generate_hmac_key",
    "generate_signing_key",
    "jsonb_text",
    "parse_json",
    "read_checkpoint_file",
    "seal",
    "verify",
    "verify_entries",
]
