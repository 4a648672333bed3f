"""The middleware benchmark runs and reports every variant (no speed assertion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench" / "middleware.py"


def load_bench() -> ModuleType:
    # Loaded by path: bench/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location("bench_middleware", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_variant() -> None:
    results = load_bench().run(quick=True)
    assert [(row["stack"], row["variant"]) for row in results] == [
        ("asgi", "starlette (bare)"),
        ("asgi", "reference contextvar mw"),
        ("asgi", "AuditMiddleware"),
        ("wsgi", "wsgi app (bare)"),
        ("wsgi", "WSGIAuditMiddleware"),
    ]
    for row in results:
        assert set(row) == {
            "stack",
            "variant",
            "us_per_request",
            "overhead_us",
            "ratio",
            "rounds",
            "iterations",
        }
        assert row["us_per_request"] > 0
        assert row["ratio"] > 0
        assert row["rounds"] == 3
        assert row["iterations"] > 0
    baselines = [row for row in results if "(bare)" in row["variant"]]
    assert [(row["overhead_us"], row["ratio"]) for row in baselines] == [(0, 1), (0, 1)]
