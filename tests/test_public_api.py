"""The public surface: what `import audit_mw` offers, and what it must not drag in."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from types import ModuleType

import psycopg
import psycopg.errors
import psycopg_pool

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


def _public_modules() -> list[ModuleType]:
    """Every module of the package whose path has no private (``_``) part."""
    found = [audit_mw]
    for info in pkgutil.walk_packages(audit_mw.__path__, "audit_mw."):
        if not any(part.startswith("_") for part in info.name.split(".")[1:]):
            found.append(importlib.import_module(info.name))
    return found


def test_the_top_level_holds_the_wiring_names_only() -> None:
    assert len(audit_mw.__all__) <= 25
    generic = {"bind", "reset", "current", "status", "install", "seal", "verify", "track"}
    assert not generic & set(audit_mw.__all__)


def test_at_most_eight_modules_sit_at_the_top_of_the_package() -> None:
    top = [info.name for info in pkgutil.iter_modules(audit_mw.__path__) if not info.ispkg]
    assert len(set(top) - {"__init__", "__main__"}) <= 8, top


def test_no_public_name_shadows_a_psycopg_one() -> None:
    theirs = set(dir(psycopg)) | set(dir(psycopg.errors)) | set(dir(psycopg_pool))
    for module in _public_modules():
        clash = theirs & set(getattr(module, "__all__", ()))
        assert not clash, f"{module.__name__} exports {sorted(clash)}, as psycopg does"


def test_no_two_public_classes_share_a_name() -> None:
    classes: dict[str, set[str]] = {}
    for module in _public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.isclass(obj):
                classes.setdefault(name, set()).add(f"{obj.__module__}.{obj.__qualname__}")
    shared = {name: where for name, where in classes.items() if len(where) > 1}
    assert not shared, shared


def test_async_names_follow_one_convention() -> None:
    # Classes `Async*`, functions `a*` (alog_event, aapply_context): no `*_async`, no `*_sync`.
    for module in _public_modules():
        for name in getattr(module, "__all__", ()):
            assert not name.endswith(("_async", "_sync")), f"{module.__name__}.{name}"
    for module in _public_modules():
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if inspect.iscoroutinefunction(obj) or inspect.isasyncgenfunction(obj):
                assert name.startswith("a"), f"{module.__name__}.{name} is async"
