"""Django: an app and a middleware, installed through ``settings.py``.

.. code-block:: python

    INSTALLED_APPS = [..., "audit_mw.integrations.django"]
    MIDDLEWARE = [
        ...,
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "audit_mw.integrations.django.middleware.DjangoAuditMiddleware",   # after authentication
        ...,
    ]
    AUDIT_MW = {"TRUSTED_PROXIES": ["10.0.0.0/8"]}   # optional, see settings.py

- The app makes every ORM statement carry the current audit context (a database execute
  wrapper, installed on each new connection, persistent or from Django's pool), and turns
  ``user_logged_in``, ``user_logged_out`` and ``user_login_failed`` into auth events written
  on a small pool of their own.
- The middleware binds the request's context (client IP with the trusted-proxy rules of the
  other middlewares, request id, user agent) and resolves ``request.user`` lazily, right
  before the request's first statement, so requests that never touch the database cost no
  session lookup.

See ``docs/integration-django.md``.
"""
