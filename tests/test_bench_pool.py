"""The pool benchmark runs and reports every variant (structure only, no speed assertion)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench" / "pool.py"

pytestmark = pytest.mark.db


def load_bench() -> ModuleType:
    # Loaded by path: bench/ is a folder of scripts, not a package on sys.path.
    spec = importlib.util.spec_from_file_location("bench_pool", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_run_reports_every_variant_against_the_plain_pool(dsn: str) -> None:
    results = load_bench().run(quick=True, dsn=dsn)
    names = [row["name"] for row in results]
    assert len(names) == len(set(names)) == 9
    baselines = {"checkout / plain pool", "update / plain pool, no audit"}
    for row in results:
        assert set(row) == {
            "name", "metric", "value", "unit", "baseline", "ratio", "round_trips",
            "extra_round_trips", "rounds", "iterations",
        }
        assert row["metric"] == "us_per_op"
        assert row["unit"] == "us"
        assert row["value"] > 0
        assert row["ratio"] > 0
        assert row["baseline"] in baselines
        assert row["baseline"].split(" / ")[0] == row["name"].split(" / ")[0]
        assert row["round_trips"] >= 0
        assert row["rounds"] == 2
        assert row["iterations"] > 0
    by_name = {row["name"]: row for row in results}
    for baseline in baselines:
        assert by_name[baseline]["ratio"] == 1
        assert by_name[baseline]["extra_round_trips"] == 0
