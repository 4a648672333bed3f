"""The benchmark scripts run: the capture part in quick mode, through the entry point.

Nothing here asserts speed; the quick sizes are too small to mean anything. What is checked
is that every variant and workload produced a row of the documented shape, and that the
entry point writes its JSON and its markdown table between the markers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench import _server, capture, run

pytestmark = pytest.mark.db


@pytest.mark.slow
def test_quick_capture_run_writes_rows_json_and_markdown(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n\nprose before\n\n"
                   f"{run.BEGIN_MARKER}\nold table\n{run.END_MARKER}\n\nprose after\n")
    json_path = tmp_path / "results.json"

    assert run.main(["--quick", "--only", "capture", "--out", str(out),
                     "--json", str(json_path)]) == 0

    document = json.loads(json_path.read_text())
    assert document["quick"] is True
    assert document["environment"]["postgresql"].startswith("postgres")
    assert document["environment"]["machine"]["cpus"] >= 1
    rows = document["results"]
    assert {r["part"] for r in rows} == {"capture"}
    for row in rows:
        assert {"name", "variant", "metric", "value", "unit"} <= row.keys()
        assert isinstance(row["value"], int | float)

    timed = [r for r in rows if r["metric"] in ("tps", "seconds")]
    assert len(timed) == 2 * 2 * len(capture.OPERATIONS) * len(capture.VARIANTS)
    names = {r["name"] for r in timed}
    for op in capture.OPERATIONS:
        for sync in ("off", "on"):
            assert f"single-row {op}, synchronous_commit={sync}" in names
            assert f"{capture.QUICK.bulk_rows}-row {op}, synchronous_commit={sync}" in names
    for name in names:
        variants = {r["variant"]: r for r in timed if r["name"] == name}
        assert set(variants) == set(capture.VARIANTS)
        assert variants["floor"]["ratio"] == 1.0  # the baseline of its own row group
        assert all(r["baseline"] == "floor" and r["value"] > 0 for r in variants.values())
    cpu = [r for r in rows if r["name"].startswith("server CPU per single-row")]
    assert {r["variant"] for r in cpu} == set(capture.VARIANTS)
    assert all(r["unit"] == "us/statement" and r["value"] > 0 for r in cpu)
    wal = {r["variant"]: r for r in rows if r["name"] == "WAL per single-row UPDATE"}
    assert set(wal) == set(capture.VARIANTS)
    assert wal["none"]["ratio"] == 1.0
    assert "target_met" in wal["audit_mw"]

    text = out.read_text()
    assert text.startswith("# Benchmarks\n\nprose before\n")
    assert text.endswith("\n\nprose after\n")
    assert "old table" not in text
    assert "### capture" in text
    assert "| name | variant | metric | value | unit |" in text


def test_missing_parts_are_skipped_and_unknown_parts_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert run.load_part("no_such_part") is None
    assert run.run_parts(["no_such_part"], quick=True) == ([], {"no_such_part": "not present"})
    assert "skipped" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run.main(["--quick", "--only", "capture,bogus"])
    assert "unknown part" in capsys.readouterr().err


def test_markers_are_appended_to_a_document_without_them(tmp_path: Path) -> None:
    out = tmp_path / "doc.md"
    out.write_text("# Title\n\nintro\n")
    run.write_markdown(out, "| a |\n")
    run.write_markdown(out, "| b |\n")
    text = out.read_text()
    assert text.startswith("# Title\n\nintro\n\n")
    assert text.count(run.BEGIN_MARKER) == 1
    assert "| b |" in text
    assert "| a |" not in text


def test_a_partial_run_keeps_the_other_parts_with_their_times(tmp_path: Path) -> None:
    earlier = tmp_path / "latest.json"
    earlier.write_text(json.dumps({
        "environment": {"when": "2026-01-01 10:00 UTC"}, "quick": False,
        "parts": {"capture": "ran in 9 s, 1 rows", "middleware": "ran in 5 s, 1 rows"},
        "results": [{"part": "capture", "name": "old capture", "value": 1},
                    {"part": "middleware", "name": "old middleware", "value": 2}]}))
    new_rows = [{"part": "capture", "name": "new capture", "value": 3}]
    rows, outcome, measured = run.keep_earlier(
        earlier, new_rows, {"capture": "ran in 8 s, 1 rows"},
        {"capture": "2026-02-02 12:00 UTC"}, quick=False)
    assert [r["name"] for r in rows] == ["new capture", "old middleware"]
    assert outcome == {"capture": "ran in 8 s, 1 rows", "middleware": "ran in 5 s, 1 rows"}
    assert measured == {"capture": "2026-02-02 12:00 UTC", "middleware": "2026-01-01 10:00 UTC"}
    env = {"when": "2026-02-02 12:00 UTC", "postgresql": "postgres (PostgreSQL) 18",
           "server_settings": {}, "machine": {"cpu": "x", "cpus": 2, "memory_gb": 1,
                                              "platform": "p", "python": "3"}}
    text = run.markdown(rows, env, outcome, False, measured)
    assert "capture 2026-02-02 12:00 UTC; middleware 2026-01-01 10:00 UTC" in text
    assert "### middleware" in text
    assert "old middleware" in text
    # A quick run never mixes with full results, nor the other way round.
    assert run.keep_earlier(earlier, new_rows, {"capture": "q"}, {"capture": "t"},
                            quick=True) == (new_rows, {"capture": "q"}, {"capture": "t"})


@pytest.mark.slow
@pytest.mark.own_server
def test_quick_capture_run_on_postgresql_16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--pg 16``: the same benchmark on the 16 of the test extra; without ``RETURNING old``
    (18) there is no floor, and audit_mw is measured against no audit and the naive trigger."""
    monkeypatch.setattr(_server, "_binaries", None)  # restored after the test
    out = tmp_path / "benchmarks.md"
    json_path = tmp_path / "results.json"

    assert run.main(["--quick", "--only", "capture", "--pg", "16", "--out", str(out),
                     "--json", str(json_path)]) == 0

    document = json.loads(json_path.read_text())
    assert "(PostgreSQL) 16." in document["environment"]["postgresql"]
    assert document["environment"]["embedded"] is False
    assert "16." in out.read_text()
    assert "(embedded)" not in out.read_text()
    timed = [r for r in document["results"] if r["metric"] in ("tps", "seconds")]
    assert timed
    for name in {r["name"] for r in timed}:
        variants = {r["variant"]: r for r in timed if r["name"] == name}
        assert set(variants) == {"none", "naive", "audit_mw"}
        assert variants["none"]["ratio"] == 1.0
        assert all(r["baseline"] == "none" and r["value"] > 0 for r in variants.values())
        assert "target" not in variants["audit_mw"]
