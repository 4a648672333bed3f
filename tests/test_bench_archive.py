"""The archive benchmark runs in quick mode and reports every figure (no speed assertion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "archive.py"

pytestmark = pytest.mark.db


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_archive", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_figure() -> None:
    results = load_bench().run(quick=True)
    names = [row["name"] for row in results]
    assert names == [
        "PostgreSQL bytes per event (partitions: heap, TOAST, indexes)",
        "Parquet bytes per event (zstd, with the chain columns)",
        "archive 20000 events (12 months, write + read back + verify)",
        "verify-archive (offline, every row recomputed)",
        "PostgreSQL: one record's history (admin statement)",
        "DuckDB: one record's history over 20000 archived events",
        "DuckDB: one record's history over 200000 events (1 real + 9 synthetic copies)",
    ]
    assert all(row["value"] > 0 for row in results)
    parquet = results[1]
    assert 0 < parquet["ratio_to_postgresql"] < 1
