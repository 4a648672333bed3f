"""The web side: middleware that binds each request's audit context, and proxy trust.

- :mod:`audit_mw.web.asgi`: :class:`AuditMiddleware` (ASGI);
- :mod:`audit_mw.web.wsgi`: :class:`WSGIAuditMiddleware` (WSGI);
- :mod:`audit_mw.web.proxy`: :class:`TrustedProxies` and :func:`resolve_client_ip`, the
  client address behind configured proxies (nothing is trusted by default);
- ``audit_mw.web._request``: what both middlewares read from a request, in one place.
"""

from audit_mw.web.asgi import AuditMiddleware, user_from_scope
from audit_mw.web.proxy import TrustedProxies, resolve_client_ip
from audit_mw.web.wsgi import WSGIAuditMiddleware, user_from_environ

__all__ = [
    "AuditMiddleware",
    "TrustedProxies",
    "WSGIAuditMiddleware",
    "resolve_client_ip",
    "user_from_environ",
    "user_from_scope",
]
