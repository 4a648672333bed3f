"""The Parquet archive: months of the example shop's trail archived (to a folder and to an
S3-compatible server on 127.0.0.1), dropped by retention, read back with DuckDB, verified
offline, and caught when a row is edited, removed, reordered or added, or a month is gone."""

from __future__ import annotations

import dataclasses
import datetime as dt
import shutil
from pathlib import Path
from typing import Any

import duckdb
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from audit_mw.archive import archive_months, attach_live, verify_archive
from audit_mw.archive import duckdb as archive_duckdb
from audit_mw.errors import ArchiveError, RetentionError
from audit_mw.integrity import JsonlSink, seal, verify
from audit_mw.integrity.retention import RetentionSink, read_retention_file, retention_file_for
from audit_mw.retention import apply_retention, parse_policy
from tests._archive import (
    ARCHIVE_QUERY,
    HMAC_ONLY,
    KEYS,
    PUBLIC,
    SHOP_MONTHS,
    canonical_archive,
    canonical_trail,
    s3_server,
    shop_trail,
    trail_rows,
)
from tests._retention import count, month_range, partition_names

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]
NOW = dt.datetime(2025, 6, 15, tzinfo=dt.UTC)
FIRST, _ = month_range(*SHOP_MONTHS[0])
_, LAST = month_range(*SHOP_MONTHS[-1])


@dataclasses.dataclass
class Shop:
    conn: Conn
    checkpoints: Path
    before: list[tuple[Any, ...]]
    canonical: list[tuple[Any, ...]]


@pytest.fixture
def shop(conn: Conn, dsn: str, tmp_path: Path) -> Shop:
    shop_trail(conn, dsn)
    checkpoints = tmp_path / "checkpoints.jsonl"
    seal(conn, KEYS, sinks=[JsonlSink(checkpoints)], batch_size=41)
    return Shop(conn, checkpoints, trail_rows(conn, FIRST, LAST),
                canonical_trail(conn, FIRST, LAST))


def _retain(shop: Shop, url: str, **kwargs: Any) -> Any:
    return apply_retention(shop.conn, parse_policy("pci"), KEYS, now=NOW, archive=url,
                           sinks=[RetentionSink(retention_file_for(shop.checkpoints))],
                           checkpoint_file=shop.checkpoints, **kwargs)


def _utc(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [(r[0], r[1].astimezone(dt.UTC), *r[2:]) for r in rows]


def _check_archive_after_drop(shop: Shop, url: str, options: dict[str, Any] | None) -> None:
    names = partition_names(shop.conn)
    assert not names & {"events_p202401", "events_p202402", "events_p202403"}
    con = archive_duckdb(url, storage_options=options)
    got = con.execute(ARCHIVE_QUERY, [FIRST, LAST]).fetchall()
    assert len(shop.before) == 90
    assert _utc(got) == _utc(shop.before)
    # Every column, compared as the canonical text the chain hashes.
    assert canonical_archive(con, FIRST, LAST) == shop.canonical
    retained = read_retention_file(retention_file_for(shop.checkpoints))
    for keys in (KEYS, HMAC_ONLY, PUBLIC):
        result = verify_archive(url, keys, storage_options=options, retention=retained)
        assert result.status == "valid", result.problems
        assert (result.months, result.events) == (3, 90)
    # The database's chain still verifies across the drops.
    assert verify(shop.conn, KEYS, checkpoint_file=shop.checkpoints).valid


def test_retention_archives_to_a_folder_drops_and_duckdb_reads_the_same_rows(
        shop: Shop, tmp_path: Path) -> None:
    url = str(tmp_path / "archive")
    result = _retain(shop, url)
    assert result.dropped == ("events_p202401", "events_p202402", "events_p202403")
    assert [m.count for m in result.archived] == [30, 30, 30]
    assert (tmp_path / "archive" / "year=2024" / "month=02" / "events_p202402.parquet").exists()
    _check_archive_after_drop(shop, url, None)
    meta = pq.ParquetFile(tmp_path / "archive/year=2024/month=01/events_p202401.parquet")
    assert meta.metadata.row_group(0).column(0).compression == "ZSTD"


def test_retention_archives_to_s3_drops_and_duckdb_reads_the_same_rows(shop: Shop) -> None:
    with s3_server() as options:
        url = "s3://audit/trail"
        result = _retain(shop, url, archive_options=options)
        assert len(result.dropped) == 3
        _check_archive_after_drop(shop, url, options)


def test_the_product_questions_and_a_query_spanning_archive_and_live_trail(
        shop: Shop, tmp_path: Path) -> None:
    url = str(tmp_path / "archive")
    _retain(shop, url)
    live = count(shop.conn, "SELECT count(*) FROM audit.events")
    live_orders = count(shop.conn, "SELECT count(*) FROM audit.events WHERE table_name = "
                                   "'orders'")
    con = archive_duckdb(url)
    history = con.execute("SELECT action, new_values FROM audit_archive WHERE table_name ="
                          " 'orders' AND record_id = '202402001' ORDER BY chain_position"
                          ).fetchall()
    assert history == [(r[3], r[7]) for r in shop.before if r[5] == "202402001"]
    assert [a for a, _ in history] == ["INSERT", "UPDATE", "UPDATE"]
    user = con.execute("SELECT count(*) FROM audit_archive WHERE app_user_id = 'user:2' AND"
                       " occurred_at >= ? AND occurred_at < ?",
                       [FIRST, month_range(2024, 3)[0]]).fetchone()
    expected = sum(1 for r in shop.before if r[8] == "user:2" and r[1] < month_range(2024, 3)[0])
    assert user == (expected,)
    assert expected > 0
    failed = con.execute("SELECT client_ip, count(*) FROM audit_archive WHERE action ="
                         " 'login_failed' GROUP BY 1 ORDER BY 1").fetchall()
    assert sum(n for _, n in failed) == 18
    assert len(failed) == 3
    # One query over both: the archive and the live trail (read through psycopg).
    attach_live(con, shop.conn)
    both = con.execute("SELECT count(*), min(occurred_at), count(DISTINCT id) FROM audit_all"
                       ).fetchone()
    assert both is not None
    assert both[0] == both[2] == 90 + live
    assert both[1].astimezone(dt.UTC) == shop.before[0][1].astimezone(dt.UTC)
    spanning = con.execute("SELECT table_name, count(*) FROM audit_all WHERE table_name ="
                           " 'orders' GROUP BY 1").fetchall()
    assert live_orders > 0
    assert spanning == [("orders", 54 + live_orders)]


# --- tampering with the Parquet file --------------------------------------------------------


@pytest.fixture
def archived(shop: Shop, tmp_path: Path) -> tuple[Shop, Path]:
    url = tmp_path / "archive"
    _retain(shop, str(url))
    return shop, url


def _rewrite(path: Path, change: Any) -> list[dict[str, Any]]:
    table = pq.read_table(path)
    rows = table.to_pylist()
    changed = change(rows)
    pq.write_table(pa.Table.from_pylist(changed, schema=table.schema), path,
                   compression="zstd")
    return rows


def _problems(url: Path, keys: Any = KEYS) -> Any:
    result = verify_archive(str(url), keys)
    assert result.status == "tampered"
    assert result.exit_code == 1
    return result.problems


FEB = Path("year=2024/month=02/events_p202402.parquet")


def test_an_edited_event_is_named(archived: tuple[Shop, Path]) -> None:
    _, url = archived
    rows: list[dict[str, Any]] = []

    def edit(r: list[dict[str, Any]]) -> list[dict[str, Any]]:
        rows.extend(r)
        r[7]["new_values"] = '{"quantity": 30}'
        return r

    _rewrite(url / FEB, edit)
    victim = rows[7]["id"]
    for keys in (KEYS, PUBLIC):
        problems = _problems(url, keys)
        named = [p for p in problems if p.event_id == victim]
        assert named, problems
        assert named[0].kind == "modified"
        assert f"event {victim}" in named[0].detail
        assert named[0].partition == "events_p202402"


def test_an_edit_with_recomputed_chain_columns_is_still_caught(
        archived: tuple[Shop, Path]) -> None:
    _, url = archived
    from audit_mw.archive._format import canonical_texts  # noqa: PLC0415
    from audit_mw.integrity.canonical import content_hash  # noqa: PLC0415

    def forge(r: list[dict[str, Any]]) -> list[dict[str, Any]]:
        r[3]["app_user_id"] = "user:99"
        r[3]["chain_content_hash"] = content_hash(canonical_texts(r[3]))
        return r

    rows = _rewrite(url / FEB, forge)
    problems = _problems(url)
    assert any(p.event_id == rows[3]["id"] and p.kind == "modified" for p in problems), problems


def test_a_removed_event_is_named_by_its_position(archived: tuple[Shop, Path]) -> None:
    _, url = archived
    rows = _rewrite(url / FEB, lambda r: r[:10] + r[11:])
    problems = _problems(url)
    missing = [p for p in problems if p.kind == "missing"]
    assert missing, problems
    assert missing[0].position == rows[10]["chain_position"]
    assert f"chain position {rows[10]['chain_position']} is missing" in missing[0].detail
    named = [p for p in problems if p.event_id == rows[10]["id"]]
    assert named, problems
    assert named[0].kind == "missing"
    assert "its row was removed" in named[0].detail


def test_reordered_events_are_named(archived: tuple[Shop, Path]) -> None:
    _, url = archived
    rows = _rewrite(url / FEB, lambda r: [*r[:4], r[5], r[4], *r[6:]])
    problems = _problems(url)
    reordered = [p for p in problems if p.kind == "reordered"]
    assert reordered, problems
    assert reordered[0].event_id == rows[5]["id"]


def test_an_added_event_is_named(archived: tuple[Shop, Path]) -> None:
    _, url = archived

    def add(r: list[dict[str, Any]]) -> list[dict[str, Any]]:
        extra = dict(r[2], id=999_999, app_user_id="intruder")
        return [*r[:3], extra, *r[3:]]

    _rewrite(url / FEB, add)
    problems = _problems(url)
    assert any(p.event_id == 999_999 for p in problems), problems


def test_a_missing_month_is_named(archived: tuple[Shop, Path]) -> None:
    shop, url = archived
    shutil.rmtree(url / "year=2024" / "month=03")
    problems = _problems(url)
    assert [(p.kind, p.partition) for p in problems] == [("missing_month", "events_p202403")]
    # Removing it from the index too breaks the index's MAC and signature.
    index = (url / "_archive.json").read_text()
    (url / "_archive.json").write_text(index.replace('"month": 3', '"month": 4'))
    assert any(p.kind == "modified" for p in _problems(url))
    assert any(p.kind == "modified" for p in _problems(url, PUBLIC))
    # The retention file names what was dropped, whatever the index says.
    retained = read_retention_file(retention_file_for(shop.checkpoints))
    result = verify_archive(str(url), HMAC_ONLY, retention=retained)
    assert ("missing_month", "events_p202403") in {(p.kind, p.partition)
                                                   for p in result.problems}


def test_verification_needs_a_key_that_signed_it(archived: tuple[Shop, Path]) -> None:
    _, url = archived
    from audit_mw.integrity.keys import KeyRing  # noqa: PLC0415

    result = verify_archive(str(url), KeyRing.build({"other": b"o" * 32}))
    assert result.status == "unverifiable"
    assert result.exit_code == 2


# --- nothing is dropped without a verified archive --------------------------------------------


def test_a_partition_whose_archive_does_not_verify_is_not_dropped(
        shop: Shop, tmp_path: Path) -> None:
    conn = shop.conn
    # A row of February edited in the database after sealing (the full verification that
    # retention runs first is skipped here, so the archive's own check is what stops it).
    conn.execute("ALTER TABLE audit.events_p202402 DISABLE TRIGGER events_append_only")
    conn.execute("UPDATE audit.events_p202402 SET app_user_id = 'mallory'"
                 " WHERE id = (SELECT min(id) FROM audit.events_p202402)")
    conn.execute("ALTER TABLE audit.events_p202402 ENABLE ALWAYS TRIGGER events_append_only")
    url = tmp_path / "archive"
    with pytest.raises(RetentionError, match="events_p202402 was not dropped") as caught:
        _retain(shop, str(url), verify_first=False)
    assert "modified" in str(caught.value)
    names = partition_names(conn)
    assert "events_p202402" in names
    assert "events_p202401" not in names
    assert not (url / "year=2024" / "month=02" / "events_p202402.parquet").exists()
    assert verify_archive(str(url), KEYS).status == "valid"  # January alone, intact


def test_archive_months_skips_what_cannot_be_archived_yet(shop: Shop, tmp_path: Path) -> None:
    conn = shop.conn
    conn.execute("INSERT INTO audit.events (occurred_at, kind, action) VALUES"
                 " ('2024-03-20T00:00:00Z', 'auth', 'login')")
    url = str(tmp_path / "a")
    run = archive_months(conn, url, KEYS, now=NOW)
    assert [m.partition for m in run.archived] == ["events_p202401", "events_p202402"]
    skipped = dict(run.skipped)
    assert "not sealed" in skipped["events_p202403"]
    assert "not over" in next(v for k, v in skipped.items() if k not in (
        "events_p202403", "events_default"))
    again = archive_months(conn, url, KEYS, partitions=["events_p202401"], now=NOW)
    assert again.archived[0].reused
    with pytest.raises(ArchiveError, match="no such partition"):
        archive_months(conn, url, KEYS, partitions=["events_p199901"], now=NOW)
    assert "events_p202401" in partition_names(conn)  # archiving alone drops nothing


@pytest.mark.parametrize("setting", ["TimeZone = 'UTC+14'", "TimeZone = 'Pacific/Kiritimati'",
                                     "DateStyle = 'SQL, DMY'", "IntervalStyle = 'iso_8601'",
                                     "extra_float_digits = -3"])
def test_the_session_settings_change_nothing_in_the_archive(
        shop: Shop, tmp_path: Path, setting: str) -> None:
    # A server or role whose default TimeZone is not UTC (common in postgresql.conf) must
    # archive the same months, which verify offline.
    conn = shop.conn
    conn.execute(f"SET {setting}")
    run = archive_months(conn, str(tmp_path / "a"), KEYS, now=NOW)
    assert [m.count for m in run.archived] == [30, 30, 30]
    result = verify_archive(str(tmp_path / "a"), KEYS)
    assert (result.status, result.months, result.events) == ("valid", 3, 90), result.problems
    con = archive_duckdb(str(tmp_path / "a"))
    assert canonical_archive(con, FIRST, LAST) == shop.canonical


def test_duckdb_is_only_imported_by_the_archive() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = ("import sys, audit_mw, audit_mw.retention, audit_mw.archive, audit_mw.cli;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('pyarrow', 'duckdb', 'fsspec', 's3fs')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
    assert duckdb.__version__


def test_the_cli_archives_retention_drops_and_an_auditor_verifies(
        shop: Shop, dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import base64  # noqa: PLC0415
    import json  # noqa: PLC0415

    from audit_mw.cli import main  # noqa: PLC0415
    from tests._archive import SIGNER  # noqa: PLC0415
    from tests._integrity import HMAC_SECRET  # noqa: PLC0415

    url = str(tmp_path / "archive")
    monkeypatch.setenv("AUDIT_HMAC_KEY", "k1:" + base64.b64encode(HMAC_SECRET).decode())
    monkeypatch.setenv("AUDIT_SIGNING_KEY",
                       base64.b64encode(SIGNER.private_bytes_raw()).decode())
    assert main(["--dsn", dsn, "archive", url, "--partition", "events_p202401", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(m["partition"], m["events"]) for m in out["archived"]] == [("events_p202401", 30)]
    assert main(["--dsn", dsn, "retention", "apply", "--policy", "pci", "--now", "2025-06-15",
                 "--archive", url, "--checkpoint-file", str(shop.checkpoints), "--json"]) == 0
    printed = capsys.readouterr().out  # the retention_applied events are logged there too
    out = json.loads(printed[printed.index("{\n"):])
    assert out["dropped"] == ["events_p202401", "events_p202402", "events_p202403"]
    assert len(out["parquet_archives"]) == 3
    # The auditor: the public key alone, and the retention file.
    monkeypatch.delenv("AUDIT_HMAC_KEY")
    monkeypatch.delenv("AUDIT_SIGNING_KEY")
    public = base64.b64encode(SIGNER.public_key().public_bytes_raw()).decode()
    retention = str(retention_file_for(shop.checkpoints))
    args = ["verify-archive", url, "--public-key", public, "--retention-file", retention]
    assert main(args) == 0
    assert "ok: 3 month(s), 90 events" in capsys.readouterr().out
    assert main(["verify-archive", url]) == 2  # no key at all
    assert "cannot verify" in capsys.readouterr().out
    assert main(["verify-archive", url + "-typo", "--public-key", public]) == 2  # nothing there
    assert "there is no archive at" in capsys.readouterr().out
    _rewrite(Path(url) / FEB, lambda r: r[:-1])
    assert main([*args, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["status"] == "tampered"
    assert any(p["kind"] == "missing" and p["partition"] == "events_p202402"
               for p in result["problems"])
