"""ASGI entry point of the Django example."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audit_mw_examples.django_app.settings")

from django.conf import settings
from django.core.asgi import get_asgi_application

application = get_asgi_application()
if not settings.AUDIT:
    from audit_mw.web.asgi import AuditMiddleware

    application = AuditMiddleware(  # type: ignore[assignment]
        application, trusted_proxies=settings.AUDIT_MW["TRUSTED_PROXIES"])
