"""The public surface: what `import audit_mw` offers, and what it must not drag in."""

from __future__ import annotations

import subprocess
import sys

import audit_mw


def test_all_names_exist_and_are_sorted() -> None:
    for name in audit_mw.__all__:
        assert hasattr(audit_mw, name), name
    def group(name: str) -> int:
        return 0 if name.isupper() else 1 if name[0].isupper() else 2
    assert audit_mw.__all__ == sorted(audit_mw.__all__, key=lambda n: (group(n), n))


def test_core_import_does_not_import_starlette() -> None:
    # Only the admin sub-app may import Starlette; the core path stays framework-free.
    code = "import sys, audit_mw; print('starlette' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "False"


def test_core_import_does_not_import_the_integrations_frameworks() -> None:
    # The integrations are optional extras: importing the package must not need them.
    code = ("import sys, audit_mw, audit_mw.pool, audit_mw.events, audit_mw.web, audit_mw.capture;"
            " print(sorted(m for m in ('sqlalchemy', 'django', 'flask_login', 'alembic',"
            " 'audit_mw.integrations') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
