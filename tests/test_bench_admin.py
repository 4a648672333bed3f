"""The admin benchmark runs in quick mode and reports every figure (no speed assertion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "admin.py"

pytestmark = pytest.mark.db


def load_bench() -> ModuleType:
    # Loaded by path: bench/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location("bench_admin", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_figure() -> None:
    results = load_bench().run(quick=True)
    assert [(row["name"], row["metric"]) for row in results] == [
        ("user + 30-day range", "latency"),
        ("record history", "latency"),
        ("cursor page 1", "latency"),
        ("cursor page 1000", "latency"),
        ("cursor page 1 (kind=data)", "latency"),
        ("cursor page 1000 (kind=data)", "latency"),
        ("viewer events page", "latency"),
        ("viewer events page 1000", "latency"),
        ("viewer user + 30-day range", "latency"),
        ("export (HTTP route, ndjson)", "throughput"),
        ("export 20000 rows (audit-mw export)", "peak RSS"),
    ]
    for row in results:
        assert {"name", "metric", "value", "unit"} <= set(row)
        assert row["value"] > 0
    for row in results[:9]:
        assert row["unit"] == "ms"
        assert row["p95"] >= row["value"]
        assert row["requests"] == 3
    assert results[9]["rows"] >= 20_000
    assert results[10]["baseline"] > 0
    assert results[10]["ratio"] > 0
