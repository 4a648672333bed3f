"""Settings of the Django example, from the environment.

- ``DATABASE_URL``: a libpq connection string or URL;
- ``DJANGO_DB_POOL=1``: Django's own psycopg pool (10 connections) instead of persistent
  connections (``CONN_MAX_AGE = None``);
- ``AUDIT_INTEGRATION=0``: without audit_mw's Django app and middleware (the WSGI and ASGI
  entry points then wrap Django in the generic middlewares instead, as a user might try);
- ``TRUSTED_PROXIES``: comma-separated CIDRs of the proxies in front of the app;
- ``DJANGO_FAST_HASHER=1``: MD5 password hashes, for load tests only (never in production).
"""

import os

from psycopg.conninfo import conninfo_to_dict

_db = conninfo_to_dict(os.environ.get("DATABASE_URL", "dbname=django_example"))
AUDIT = os.environ.get("AUDIT_INTEGRATION", "1") != "0"
POOL = os.environ.get("DJANGO_DB_POOL") == "1"

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example only, not a secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "audit_mw_examples.django_app.urls"
USE_TZ = True

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "audit_mw_examples.django_app.orders",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
if AUDIT:
    INSTALLED_APPS.append("audit_mw.integrations.django")
    # After AuthenticationMiddleware: it reads request.user (lazily).
    MIDDLEWARE.append("audit_mw.integrations.django.middleware.DjangoAuditMiddleware")

AUDIT_MW = {
    "TRUSTED_PROXIES": [p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p],
    "EVENTS_POOL": {"min_size": 1, "max_size": 4},
}

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": _db.get("dbname", ""),
        "USER": _db.get("user", ""),
        "PASSWORD": _db.get("password", ""),
        "HOST": _db.get("host", ""),
        "PORT": _db.get("port", ""),
        # Persistent connections, or Django's pool (Django 5.1+, needs psycopg_pool).
        "CONN_MAX_AGE": 0 if POOL else None,
        "OPTIONS": {"pool": {"min_size": 2, "max_size": 10, "timeout": 60}} if POOL else {},
    }
}
SESSION_ENGINE = "django.contrib.sessions.backends.db"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
if os.environ.get("DJANGO_FAST_HASHER") == "1":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
