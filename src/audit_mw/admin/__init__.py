"""The admin routes: query, trace, export and verify the audit trail over HTTP.

The only part of ``audit_mw`` that imports Starlette. ``admin_app(pool, authorize=...)``
returns a Starlette app to mount at ``/audit``; ``admin_wsgi_app`` serves the same app
from a WSGI application. See ``docs/admin.md``.
"""

from audit_mw.admin.app import Authorize, admin_app
from audit_mw.admin.export import (
    ExportKey,
    ExportSigningKey,
    export_key_from_env,
    export_signing_key_from_env,
    verify_export,
)

__all__ = ["Authorize", "ExportKey", "ExportSigningKey", "admin_app", "export_key_from_env",
           "export_signing_key_from_env", "verify_export"]
