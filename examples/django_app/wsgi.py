"""WSGI entry point of the Django example."""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audit_mw_examples.django_app.settings")

from django.conf import settings
from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
if not settings.AUDIT:
    # What the generic docs suggested before the Django integration: the negative control.
    from audit_mw.web.wsgi import WSGIAuditMiddleware

    application = WSGIAuditMiddleware(  # type: ignore[assignment]
        application, trusted_proxies=settings.AUDIT_MW["TRUSTED_PROXIES"])
