"""The Django app of audit_mw: ``INSTALLED_APPS = [..., "audit_mw.integrations.django"]``."""

from __future__ import annotations

from django.apps import AppConfig
from django.contrib.auth.signals import user_logged_in, user_logged_out, user_login_failed
from django.db import connections
from django.db.backends.signals import connection_created

from audit_mw.integrations.django.settings import audit_settings


class AuditMwConfig(AppConfig):
    """Wires the execute wrapper and the auth signals when Django starts."""

    name = "audit_mw.integrations.django"
    label = "audit_mw"
    verbose_name = "audit_mw"

    def ready(self) -> None:
        """Connect the receivers (see :mod:`audit_mw.integrations.django._hooks`)."""
        # Imported here: the auth models are not ready when Django imports this module.
        from audit_mw.integrations.django import _hooks  # noqa: PLC0415

        audit_settings()  # a bad AUDIT_MW fails at start, not at the first request
        connection_created.connect(_hooks.install_wrapper,
                                   dispatch_uid="audit_mw.install_wrapper")
        # Connections opened before the app was ready (rare: a check at start-up).
        for connection in connections.all(initialized_only=True):
            if connection.connection is not None:
                _hooks.install_wrapper(None, connection)
        user_logged_in.connect(_hooks.logged_in, dispatch_uid="audit_mw.logged_in")
        user_logged_out.connect(_hooks.logged_out, dispatch_uid="audit_mw.logged_out")
        user_login_failed.connect(_hooks.login_failed, dispatch_uid="audit_mw.login_failed")
