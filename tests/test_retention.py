"""Retention on the partitioned trail: what is dropped, what survives, and verification
across the drops. Old data is made without the clock: explicit partition ranges, explicit
event times, and a policy evaluated at an injected ``now``."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_mw.admin.export import ExportKey, verify_export
from audit_mw.errors import RetentionError
from audit_mw.integrity import JsonlSink, seal, verify
from audit_mw.integrity.retention import (
    RetentionSink,
    read_retention_file,
    retention_file_for,
)
from audit_mw.retention import (
    add_hold,
    apply_retention,
    list_holds,
    parse_policy,
    plan_retention,
    release_hold,
)
from tests._integrity import HMAC_SECRET, build_trail, guards_off, hmac_keys
from tests._retention import add_rows, count, month_range, old_month, partition_names

pytestmark = pytest.mark.db

KEYS = hmac_keys()
NOW = dt.datetime(2021, 1, 15, 12, 0, tzinfo=dt.UTC)
PCI = parse_policy("pci")

Conn = psycopg.Connection[Any]


@dataclasses.dataclass
class History:
    conn: Conn
    file: Path
    sink: RetentionSink


@pytest.fixture
def history(conn: Conn, tmp_path: Path) -> History:
    """Three months of 2019 (20 events each), June 2020, and a current trail; all sealed."""
    old_month(conn, 2019, 1, 20, user="alice")
    old_month(conn, 2019, 2, 20, user="bob")
    old_month(conn, 2019, 3, 20, user="carol")
    old_month(conn, 2020, 6, 5, user="dave")
    build_trail(conn, 60)
    file = tmp_path / "checkpoints.jsonl"
    seal(conn, KEYS, sinks=[JsonlSink(file)], batch_size=37)
    return History(conn, file, RetentionSink(retention_file_for(file)))


def _apply(h: History, policy: str = "pci", **kwargs: Any) -> Any:
    return apply_retention(h.conn, parse_policy(policy), KEYS, now=NOW, sinks=[h.sink],
                           checkpoint_file=h.file, **kwargs)


def _positions(conn: Conn, partition: str) -> list[int]:
    return [int(r[0]) for r in conn.execute(
        f"SELECT c.position FROM audit.{partition} e JOIN audit.chain c ON c.event_id = e.id"
        " ORDER BY 1")]


# --- policies ------------------------------------------------------------------------------


def test_presets_and_durations() -> None:
    assert parse_policy("HIPAA").months == 84
    assert parse_policy("soc2").months == 36
    assert (PCI.months, PCI.hot_months) == (12, 3)
    assert parse_policy("18mo").months == 18
    assert parse_policy("2y").months == 24
    assert parse_policy("400d").days == 400
    assert parse_policy("26w").days == 182
    assert "the last 3 months immediately available" in PCI.describe()
    for bad in ("12m", "forever", "0d", "-3y", ""):
        with pytest.raises(RetentionError):
            parse_policy(bad)


def test_cutoff_is_calendar_arithmetic() -> None:
    end_of_march = dt.datetime(2021, 3, 31, 8, 0, tzinfo=dt.UTC)
    assert parse_policy("1mo").cutoff(end_of_march) == dt.datetime(2021, 2, 28, 8, 0,
                                                                   tzinfo=dt.UTC)
    assert PCI.cutoff(NOW) == dt.datetime(2020, 1, 15, 12, 0, tzinfo=dt.UTC)
    assert not PCI.shorter_than_minimum(NOW)
    # The twelve months before NOW hold 29 February 2020: 366 days.
    assert not parse_policy("366d").shorter_than_minimum(NOW)
    assert parse_policy("365d").shorter_than_minimum(NOW)
    assert parse_policy("11mo").shorter_than_minimum(NOW)


# --- what is dropped -----------------------------------------------------------------------


def test_a_dry_run_changes_nothing(history: History) -> None:
    conn = history.conn
    before = (partition_names(conn), count(conn, "SELECT count(*) FROM audit.events"))
    plan = _apply(history, dry_run=True)
    assert plan.dry_run
    assert [d.partition for d in plan.to_drop] == [
        "events_p201901", "events_p201902", "events_p201903"]
    assert all(d.rows == 20 for d in plan.to_drop)
    assert (partition_names(conn), count(conn, "SELECT count(*) FROM audit.events")) == before
    assert count(conn, "SELECT count(*) FROM audit.retention_checkpoints") == 0
    assert not retention_file_for(history.file).exists()


def test_apply_drops_exactly_the_expired_sealed_unheld_partitions(history: History) -> None:
    conn = history.conn
    start, _ = month_range(2019, 2)
    hold = add_hold(conn, reason="litigation 42", range_from=start + dt.timedelta(days=9),
                    range_to=start + dt.timedelta(days=10), created_by="counsel")
    # April 2019 expired too, but it was written after the last seal.
    old_month(conn, 2019, 4, 3, user="erin")
    total = count(conn, "SELECT count(*) FROM audit.events")

    result = _apply(history)

    assert result.dropped == ("events_p201901", "events_p201903")
    reasons = {d.partition: d.reason for d in result.decisions}
    assert f"legal hold {hold}" in reasons["events_p201902"]
    assert "not sealed" in reasons["events_p201904"]
    assert reasons["events_p202006"] == "within the policy"
    names = partition_names(conn)
    assert {"events_p201902", "events_p201904", "events_p202006", "events_default"} <= names
    assert not names & {"events_p201901", "events_p201903"}
    # 40 events dropped; two retention_applied events (and the hold's own event) written.
    assert count(conn, "SELECT count(*) FROM audit.events") == total - 40 + 2
    applied = conn.execute(
        "SELECT resource_id, metadata->>'rows', metadata->>'policy', db_role FROM audit.events"
        " WHERE kind = 'admin' AND action = 'retention_applied' ORDER BY id").fetchall()
    assert applied == [("events_p201901", "20", "pci", "postgres"),
                       ("events_p201903", "20", "pci", "postgres")]
    stored = conn.execute("SELECT seq, partition_name, row_count FROM"
                          " audit.retention_checkpoints ORDER BY seq").fetchall()
    assert stored == [(1, "events_p201901", 20), (2, "events_p201903", 20)]
    in_file = read_retention_file(retention_file_for(history.file))
    assert [(c.seq, c.partition) for c in in_file] == [(1, "events_p201901"),
                                                        (2, "events_p201903")]
    assert all(c.problem(KEYS) is None for c in in_file)


def test_a_policy_under_twelve_months_is_refused_without_force(history: History) -> None:
    with pytest.raises(RetentionError, match="less than 12 months"):
        _apply(history, "6mo")
    with pytest.raises(RetentionError, match="less than 12 months"):
        plan_retention(history.conn, parse_policy("300d"), now=NOW)
    assert "events_p201901" in partition_names(history.conn)
    forced = _apply(history, "6mo", force=True)
    # Six months before NOW reaches June 2020 as well.
    assert "events_p202006" in forced.dropped


def test_record_and_user_holds_keep_their_partitions_until_released(history: History) -> None:
    conn = history.conn
    record = add_hold(conn, reason="subpoena", table="public.items",
                      record_id="events_p201901-7")
    user = add_hold(conn, reason="investigation", user_id="carol")
    add_hold(conn, reason="someone else's data", user_id="nobody-in-2019")
    plan = plan_retention(conn, PCI, now=NOW)
    assert [d.partition for d in plan.to_drop] == ["events_p201902"]
    assert {d.partition: d.holds for d in plan.decisions if d.holds} == {
        "events_p201901": (record,), "events_p201903": (user,)}

    release_hold(conn, user, reason="closed", released_by="counsel")
    with pytest.raises(RetentionError, match="already released"):
        release_hold(conn, user, reason="again")
    assert [h.id for h in list_holds(conn)] == [record, record + 2]
    released = [h for h in list_holds(conn, include_released=True) if not h.active]
    assert [(h.id, h.released_by, h.release_reason) for h in released] == [
        (user, "counsel", "closed")]
    assert _apply(history).dropped == ("events_p201902", "events_p201903")
    actions = [r[0] for r in conn.execute(
        "SELECT action FROM audit.events WHERE kind = 'admin' ORDER BY id")]
    assert actions == ["legal_hold_added"] * 3 + ["legal_hold_released"] + [
        "retention_applied"] * 2
    # Holds are never edited or deleted, even by the owner.
    conn.execute("SET ROLE audit_owner")
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
        conn.execute("DELETE FROM audit.legal_holds")
    conn.execute("RESET ROLE")


def test_the_database_refuses_a_drop_without_its_checkpoint(history: History) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="does not name"):
        history.conn.execute("SELECT audit.drop_partition('audit.events_p201901', 1)")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="not a droppable"):
        history.conn.execute("SELECT audit.drop_partition('audit.events_default', 1)")


# --- verification across the cut ----------------------------------------------------------


def test_verification_after_retention_is_valid_and_reports_the_cut(history: History) -> None:
    conn = history.conn
    dropped = [p for m in ("01", "02", "03") for p in _positions(conn, f"events_p2019{m}")]
    _apply(history)
    result = verify(conn, KEYS, checkpoint_file=history.file)
    assert result.valid, result
    assert result.status == "valid"
    assert result.retention_cut is not None
    assert result.retention_cut["bridged_entries"] == len(dropped) == 60
    assert result.retention_cut["partitions"] == [
        "events_p201901", "events_p201902", "events_p201903"]
    assert result.retention_cut["latest"]["policy"] == "pci"
    assert "dropped by retention" in result.detail
    assert result.to_json()["retention_cut"]["dropped_events"] == 60
    # Sealing goes on after the drop (the three retention_applied events and a new row),
    # and verification with it.
    conn.execute("INSERT INTO items VALUES (99999, 'late', 1, '{}', '{}')")
    assert seal(conn, KEYS, sinks=[JsonlSink(history.file)]).sealed == 4
    assert verify(conn, KEYS, checkpoint_file=history.file).status == "valid"


def test_a_held_partition_stays_verified_after_a_newer_one_is_dropped(
    history: History,
) -> None:
    conn = history.conn
    add_hold(conn, reason="audit", user_id="alice")
    _apply(history)
    assert "events_p201901" in partition_names(conn)
    victim_position = _positions(conn, "events_p201901")[4]
    victim = conn.execute("SELECT event_id FROM audit.chain WHERE position = %s",
                          [victim_position]).fetchone()
    assert victim is not None
    with guards_off(conn, "events"):
        conn.execute("UPDATE audit.events SET app_user_id = 'mallory' WHERE id = %s", victim)
    result = verify(conn, KEYS, checkpoint_file=history.file)
    assert (result.kind, result.first_bad_position, result.first_bad_id) == (
        "modified", victim_position, victim[0])


def test_a_partition_dropped_by_hand_is_detected(history: History) -> None:
    conn = history.conn
    first = _positions(conn, "events_p201902")[0]
    conn.execute("DROP TABLE audit.events_p201902")
    result = verify(conn, KEYS, checkpoint_file=history.file)
    assert not result.valid
    assert (result.kind, result.first_bad_position) == ("missing", first)
    # ...also after a lawful drop of other partitions.
    _apply(history, verify_first=False)
    again = verify(conn, KEYS, checkpoint_file=history.file)
    assert (again.kind, again.first_bad_position) == ("missing", first)


def test_retention_refuses_to_drop_on_a_broken_chain(history: History) -> None:
    conn = history.conn
    conn.execute("DROP TABLE audit.events_p202006")
    with pytest.raises(RetentionError, match="does not verify"):
        _apply(history)
    assert count(conn, "SELECT count(*) FROM audit.retention_checkpoints") == 0
    assert "events_p201901" in partition_names(conn)


def test_a_forged_retention_checkpoint_is_detected(history: History) -> None:
    conn = history.conn
    positions = _positions(conn, "events_p201902")
    conn.execute("DROP TABLE audit.events_p201902")
    forged = hmac_keys(k1=b"x" * 32)  # the attacker's own key under the real key id
    conn.execute(
        "INSERT INTO audit.retention_checkpoints (seq, chain_id, partition_name, range_to,"
        " row_count, positions, position, head_hash, policy, created_at, key_id, mac)"
        " SELECT 1, chain_id, 'events_p201902', '2019-03-01', 20, %s::int8multirange, %s,"
        " (SELECT entry_hash FROM audit.chain WHERE position = %s), 'pci', now(), 'k1', %s"
        " FROM audit.chains",
        [f"{{[{positions[0]},{positions[-1] + 1})}}", positions[-1], positions[-1],
         b"\0" * 32])
    assert forged.hmac_keys["k1"] != HMAC_SECRET
    result = verify(conn, KEYS)
    assert (result.kind, result.valid) == ("bad_checkpoint", False)
    assert "HMAC does not match" in result.detail


def test_an_archive_is_written_before_the_drop_and_verifies(
    history: History, tmp_path: Path
) -> None:
    folder = tmp_path / "archive"
    result = _apply(history, archive_dir=folder)
    assert [a.name for a in result.archives] == [
        "events_p201901.ndjson", "events_p201902.ndjson", "events_p201903.ndjson"]
    checked = verify_export(folder / "events_p201902.ndjson", ExportKey("k1", HMAC_SECRET))
    assert checked.ok, checked.problems
    assert checked.count == 20
    first_line = json.loads((folder / "events_p201901.ndjson").read_text().splitlines()[1])
    assert first_line["app_user_id"] == "alice"
    # January 2019 again (rows arriving late, say): its archive name is taken.
    old_month(history.conn, 2019, 1, 1, user="again")
    seal(history.conn, KEYS)
    with pytest.raises(RetentionError, match="exists already"):
        _apply(history, archive_dir=folder)


def test_rows_written_into_an_expired_partition_after_planning_stop_the_drop(
    history: History,
) -> None:
    conn = history.conn
    start, _ = month_range(2019, 1)
    plan = plan_retention(conn, PCI, now=NOW)
    add_rows(conn, start, 2, user="late", record_prefix="late")
    seal(conn, KEYS)
    with conn.transaction():
        conn.execute(
            "INSERT INTO audit.retention_checkpoints (seq, chain_id, partition_name,"
            " range_from, range_to, row_count, positions, position, head_hash, policy,"
            " created_at, key_id, mac) SELECT 1, chain_id, 'events_p201901', %s, %s, 20,"
            " '{}', 0, %s, 'pci', now(), 'k1', %s FROM audit.chains",
            [plan.to_drop[0].range_from, plan.to_drop[0].range_to, b"\0" * 32, b"\0"])
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState,
                           match="holds 22 events"), conn.transaction():
            conn.execute("SELECT audit.drop_partition('audit.events_p201901', 1)")
        raise psycopg.Rollback
    assert "events_p201901" in partition_names(conn)
