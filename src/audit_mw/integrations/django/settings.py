"""The ``AUDIT_MW`` setting of the Django integration, read once and validated."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from django.conf import settings as django_settings

from audit_mw.errors import ConfigurationError
from audit_mw.web._request import Options, make_options, new_request_id

__all__ = ["AuditSettings", "audit_settings"]

_KEYS: Final = frozenset({
    "TRUSTED_PROXIES", "FORWARDED_HEADER", "REQUEST_ID_HEADER", "TRUST_REQUEST_ID",
    "ECHO_REQUEST_ID", "USER_AGENT_MAX", "BIND_STRUCTLOG", "EVENTS_DATABASE", "EVENTS_POOL",
    "AUTH_EVENTS",
})


@dataclass(frozen=True)
class AuditSettings:
    """``settings.AUDIT_MW``, validated."""

    options: Options
    #: The alias in ``DATABASES`` whose server receives the auth events.
    events_database: str
    #: Keyword arguments of the events' ``psycopg_pool.ConnectionPool``.
    events_pool: Mapping[str, Any]
    #: Whether Django's auth signals become auth events.
    auth_events: bool


@cache
def audit_settings() -> AuditSettings:
    """Read and check ``settings.AUDIT_MW`` (a dict; every key optional)."""
    raw = getattr(django_settings, "AUDIT_MW", {}) or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError("settings.AUDIT_MW must be a dict")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigurationError(f"settings.AUDIT_MW has unknown keys: {', '.join(unknown)}")
    options = make_options(
        trusted_proxies=raw.get("TRUSTED_PROXIES", ()),
        forwarded_header=raw.get("FORWARDED_HEADER", "x-forwarded-for"),
        request_id_header=raw.get("REQUEST_ID_HEADER", "x-request-id"),
        trust_request_id=raw.get("TRUST_REQUEST_ID", True),
        generate_request_id=new_request_id,
        echo_request_id=raw.get("ECHO_REQUEST_ID", True),
        user_agent_max=raw.get("USER_AGENT_MAX", 512),
        bind_structlog=raw.get("BIND_STRUCTLOG", True),
    )
    pool = {"min_size": 1, "max_size": 4, "timeout": 10.0, **raw.get("EVENTS_POOL", {})}
    return AuditSettings(options=options,
                         events_database=str(raw.get("EVENTS_DATABASE", "default")),
                         events_pool=pool, auth_events=bool(raw.get("AUTH_EVENTS", True)))
