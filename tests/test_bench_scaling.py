"""The scaling benchmark runs in quick mode and reports every figure (no speed assertion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "scaling.py"

pytestmark = pytest.mark.db


def load_bench() -> ModuleType:
    # Loaded by path: bench/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location("bench_scaling", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_figure() -> None:
    results = load_bench().run(quick=True)
    names = [row["name"] for row in results]
    assert names[0] == "bulk load 20000 events into 24 partitions"
    assert names[1:] == [
        "VACUUM ANALYZE after the load",
        "storage per event (heap, TOAST, indexes)",
        "events per GB",
        "user + 30-day range",
        "record history",
        "first page (no filter)",
        "cursor page 200 (keyset halfway down)",
        "insert through the capture trigger (100-row statements)",
        "chain per sealed entry (audit.chain, indexes)",
        "partitions ensure (nothing to do)",
        "retention drop (plan, checkpoint, event, DROP)",
    ]
    for row in results:
        assert {"name", "metric", "value", "unit"} <= set(row)
        assert row["value"] > 0
    for row in results[4:8]:
        assert row["unit"] == "ms"
        assert row["p95"] >= row["value"]
        assert row["requests"] == 5
    capture = results[8]
    assert capture["baseline"] > 0
    assert capture["ratio"] > 0
    assert results[-1]["partitions"] >= 1
    assert results[-1]["rows"] > 0
