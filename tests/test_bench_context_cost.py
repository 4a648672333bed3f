"""The context-cost benchmark runs, reports every variant against its baseline, and its
variants carry the context they say they carry (no speed assertion)."""

from __future__ import annotations

import psycopg
import pytest
from bench import context_cost

pytestmark = pytest.mark.db


def test_quick_run_reports_every_variant_and_attributes_its_writes(dsn: str) -> None:
    results = context_cost.run(quick=True, dsn=dsn)
    names = [row["name"] for row in results]
    assert names[0] == context_cost.BASELINE
    assert len(names) == len(set(names)) == 8
    for row in results:
        assert row["metric"] == "us_per_transaction"
        assert row["value"] > 0
        assert row["baseline"] == context_cost.BASELINE
        assert len(row["samples"]) == row["rounds"] == 2
    assert results[0]["ratio"] == 1
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT app_user_id, request_id FROM audit.events "
            "WHERE kind = 'data' AND table_name = 'bench_audited'").fetchall()
    # Every variant's transactions were captured with a request id; those that send five
    # settings set a new user each time too.
    assert len(rows) > 0
    assert all(request_id and request_id.startswith("req-") for _, request_id in rows)
    assert len({request_id for _, request_id in rows}) > len(rows) // 2
    assert len({user for user, _ in rows}) > 5
