"""The errors ``audit_mw`` raises.

Every error the package raises on purpose derives from :class:`AuditError`::

    AuditError
     +-- ConfigurationError     the package is set up wrongly (missing key, bad option, no DB)
     +-- SchemaError            the audit schema is missing, outdated or tampered with
     |    +-- TrackingError     a table cannot be tracked or untracked as asked
     +-- EventWriteError        an application event could not be stored (fail-closed policy)
     +-- VerificationError      verification could not run (not: "the chain is broken")
     +-- QueryError             bad input to the query/export API (a 400 in the admin routes)
     +-- RetentionError         a retention policy or legal hold request was refused
     +-- ArchiveError           an archive could not be written or read (not: "it is tampered")
     +-- StreamError            the live stream cannot go on (a sink refused, bad state file)

Messages are lower-case, say what was wrong and, where it helps, what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ArchiveError",
    "AuditError",
    "ConfigurationError",
    "EventWriteError",
    "QueryError",
    "RetentionError",
    "SchemaError",
    "StreamError",
    "TrackingError",
    "VerificationError",
]


class AuditError(Exception):
    """Base class of every error raised by ``audit_mw``."""


class ConfigurationError(AuditError):
    """The package is configured wrongly, or something it needs is missing."""


class SchemaError(AuditError):
    """The audit schema is missing, outdated, or differs from what the package installed."""


class TrackingError(SchemaError):
    """A table cannot be tracked or untracked as requested."""


class EventWriteError(AuditError):
    """An application event could not be written, and the failure policy is to raise."""


class VerificationError(AuditError):
    """Sealing or verification could not run (a broken chain is a result, not an error).

    Named so as not to shadow :class:`psycopg.IntegrityError`, a constraint violation.
    """


class QueryError(AuditError):
    """Invalid input to the query or export API.

    ``parameter`` names the offending input, so that HTTP callers can be told which one.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter
        self.message = message


class RetentionError(AuditError):
    """A retention policy, legal hold or partition drop was refused (nothing was dropped)."""


class ArchiveError(AuditError):
    """An archive could not be written, read back or reached (storage, missing extra)."""


class StreamError(AuditError):
    """The live stream cannot go on: a sink refused the events, or its state is unusable."""
