"""The integrity benchmark runs in quick mode and reports every row (no speed assertion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "integrity.py"


def load_bench() -> ModuleType:
    # Loaded by path: bench/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location("bench_integrity", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.db
def test_quick_run_reports_seal_verify_and_memory() -> None:
    results = load_bench().run(quick=True)
    assert [(r["name"], r["metric"]) for r in results] == [
        ("seal", "throughput"),
        ("stream only (baseline)", "throughput"),
        ("verify", "throughput"),
        ("verify", "seconds per 1M entries"),
        ("verify", "peak traced memory at 500 entries"),
        ("verify", "peak traced memory at 5000 entries"),
        ("process", "peak resident set size"),
    ]
    for row in results:
        assert {"name", "metric", "value", "unit"} <= set(row)
        assert row["value"] > 0
    assert results[1]["ratio"] == 1.0
    assert results[2]["baseline"] == "stream only"
    assert results[2]["entries"] == 5000
