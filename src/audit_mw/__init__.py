"""audit_mw: a compliance-grade, tamper-evident audit trail for Python web apps on PostgreSQL."""

from audit_mw.errors import (
    AuditError,
    ConfigurationError,
    EventWriteError,
    IntegrityError,
    QueryError,
    SchemaError,
    TrackingError,
)

__all__ = [
    "AuditError",
    "ConfigurationError",
    "EventWriteError",
    "IntegrityError",
    "QueryError",
    "SchemaError",
    "TrackingError",
]

__version__ = "0.1.0"
