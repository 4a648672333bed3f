"""The round-trip benchmark runs and reports every variant (structure only, no speed assertion)."""

from __future__ import annotations

import pytest
from bench import pool_latency

pytestmark = pytest.mark.db


def test_quick_run_reports_every_variant_with_its_baseline_and_targets(dsn: str) -> None:
    results = pool_latency.run(quick=True, dsn=dsn)
    assert [row["name"] for row in results] == list(pool_latency.VARIANTS)
    by_name = {row["name"]: row for row in results}
    for row in results:
        assert row["metric"] == "ms_per_request"
        assert row["unit"] == "ms"
        assert row["value"] > 0
        assert row["baseline"] in by_name
        assert row["ratio"] > 0
        if row["baseline"] == row["name"]:
            assert row["ratio"] == 1
        assert row["throughput"] == pytest.approx(1 / row["ratio"])
        direct = row["name"].startswith("direct")
        blocks = pool_latency.DIRECT_BLOCKS if direct else pool_latency.PROXY_BLOCKS
        assert row["rounds"] == 2 * blocks
        assert row["requests"] > 0
        assert row["name"].split(" / ")[0] == row["baseline"].split(" / ")[0]
    targets = {row["name"] for row in results if "target" in row}
    assert targets == {
        "proxy / AuditPool, new context", "proxy / AsyncAuditPool, new context",
        "direct / AuditPool, new context", "direct / AsyncAuditPool, new context",
    }
    assert all(isinstance(by_name[name]["target_met"], bool) for name in targets)
    # The proxy counts round trips: three for a plain request (BEGIN, UPDATE, COMMIT), as
    # many with a new context (the settings ride in the BEGIN's message), one fewer with
    # pipeline_begin (BEGIN, settings and UPDATE in one pipeline).
    assert by_name["proxy / plain pool, audited table"]["round_trips"] == 3
    assert by_name["proxy / AuditPool, new context"]["round_trips"] == 3
    assert by_name["proxy / AsyncAuditPool, new context"]["round_trips"] == 3
    assert by_name["proxy / AuditPool, new context, pipeline_begin"]["round_trips"] == 2
    assert by_name["proxy / AsyncAuditPool, new context, pipeline_begin"]["round_trips"] == 2
    assert "round_trips" not in by_name["direct / AuditPool, new context"]


def test_ratios_pair_each_block_with_its_neighbouring_baseline_block() -> None:
    # Block by block: 1, 2 and 3 times the baseline, median 2; the ratio of the two medians
    # (3 against 1) would carry the baseline's drift instead.
    assert pool_latency._paired_ratio([1.0, 10.0, 3.0], [1.0, 5.0, 1.0]) == 2.0
