"""Tampering as a superuser, on a sealed chain of about 1,000 entries: the verifier names the
first bad entry and the kind of break."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from psycopg import sql

from audit_mw import _sql
from audit_mw.integrity import JsonlSink, KeyRing, seal, verify
from audit_mw.integrity.canonical import CONTENT_TAG, encode_fields, entry_hash_from_content
from audit_mw.integrity.chain import GENESIS
from audit_mw.integrity.checkpoints import Checkpoint, read_checkpoint_file
from audit_mw.integrity.seal import checkpoint_from_row
from tests._integrity import HMAC_SECRET, OTHER_SECRET, build_trail, event_at, guards_off, hmac_keys

pytestmark = pytest.mark.db

KEYS = hmac_keys()


@dataclasses.dataclass
class Trail:
    conn: psycopg.Connection[Any]
    head: int
    file: Path


def _seal_in_steps(conn: psycopg.Connection[Any], keys: KeyRing, sink: JsonlSink) -> int:
    total_row = conn.execute("SELECT count(*) FROM audit.events").fetchone()
    assert total_row is not None
    total = int(total_row[0])
    # Checkpoints at 200, 400, 600, 800, total - 50 and total.
    seal(conn, keys, sinks=[sink], batch_size=200, max_batches=4)
    seal(conn, keys, sinks=[sink], batch_size=total - 850, max_batches=1)
    result = seal(conn, keys, sinks=[sink])
    assert result.head_position == total
    return total


@pytest.fixture
def trail(conn: psycopg.Connection[Any], tmp_path: Path) -> Trail:
    build_trail(conn, 1000)
    sink = JsonlSink(tmp_path / "checkpoints.jsonl")
    head = _seal_in_steps(conn, KEYS, sink)
    assert len(read_checkpoint_file(sink.path)) == 6
    assert verify(conn, KEYS, checkpoint_file=sink.path).status == "valid"
    return Trail(conn, head, sink.path)


def _expect(result: Any, kind: str, position: int, event_id: int | None) -> None:
    assert result.valid is False, result
    assert (result.kind, result.first_bad_position, result.first_bad_id) == (
        kind, position, event_id), result
    assert result.exit_code in (1, 2)


def test_modified_field(trail: Trail) -> None:
    victim = event_at(trail.conn, 500)
    with guards_off(trail.conn, "events"):
        trail.conn.execute("UPDATE audit.events SET app_user_id = 'mallory' WHERE id = %s",
                           [victim])
    _expect(verify(trail.conn, KEYS), "modified", 500, victim)
    _expect(verify(trail.conn, KEYS, checkpoint_file=trail.file), "modified", 500, victim)


def test_modified_jsonb_number_keeps_value_but_not_text(trail: Trail) -> None:
    # 2.50 and 2.5 are equal numbers, but not what was stored and sealed.
    row = trail.conn.execute(
        "SELECT c.position, e.id FROM audit.chain c JOIN audit.events e ON e.id = c.event_id"
        " WHERE e.new_values::text LIKE '%%2.50%%' ORDER BY c.position LIMIT 1").fetchone()
    assert row is not None
    with guards_off(trail.conn, "events"):
        trail.conn.execute(
            "UPDATE audit.events SET new_values = replace(new_values::text, '2.50', '2.5')::jsonb"
            " WHERE id = %s", [row[1]])
    _expect(verify(trail.conn, KEYS), "modified", row[0], row[1])


def test_deleted_entry(trail: Trail) -> None:
    victim = event_at(trail.conn, 321)
    with guards_off(trail.conn, "events"):
        trail.conn.execute("DELETE FROM audit.events WHERE id = %s", [victim])
    _expect(verify(trail.conn, KEYS), "missing", 321, victim)


def test_deleted_chain_position(trail: Trail) -> None:
    with guards_off(trail.conn, "chain"):
        trail.conn.execute("DELETE FROM audit.chain WHERE position = 321")
    _expect(verify(trail.conn, KEYS), "missing", 321, None)


def test_inserted_forged_entry(trail: Trail) -> None:
    # A forged event slipped among sealed ones: an old transaction id, an unused id.
    neighbour = event_at(trail.conn, 700)
    row = trail.conn.execute(
        "INSERT INTO audit.events (id, occurred_at, kind, action, app_user_id, txid)"
        " OVERRIDING SYSTEM VALUE SELECT 900000, occurred_at, 'auth', 'login', 'admin', txid"
        " FROM audit.events WHERE id = %s RETURNING id", [neighbour]).fetchone()
    assert row is not None
    expected_before = trail.conn.execute(
        "SELECT min(c.position) FROM audit.chain c JOIN audit.events e ON e.id = 900000"
        " WHERE (c.event_txid, c.event_id) > (e.txid, e.id)").fetchone()
    assert expected_before is not None
    assert 700 < expected_before[0] <= 711
    _expect(verify(trail.conn, KEYS), "inserted", expected_before[0], 900000)


def test_swapped_entries_in_the_chain(trail: Trail) -> None:
    a, b = event_at(trail.conn, 400), event_at(trail.conn, 401)
    with guards_off(trail.conn, "chain"):
        trail.conn.execute(
            "UPDATE audit.chain SET event_id = CASE position WHEN 400 THEN %s ELSE %s END"
            " WHERE position IN (400, 401)", [-1, -2])
        trail.conn.execute("UPDATE audit.chain SET event_id = %s WHERE position = 400", [b])
        trail.conn.execute("UPDATE audit.chain SET event_id = %s WHERE position = 401", [a])
    _expect(verify(trail.conn, KEYS), "reordered", 400, b)


def test_swapped_event_contents(trail: Trail) -> None:
    a, b = event_at(trail.conn, 600), event_at(trail.conn, 601)
    columns = [r[0] for r in trail.conn.execute(_sql.query("integrity", "event_columns"))]
    others = [c for c in columns if c != "id"]
    assignment = sql.SQL(", ").join(sql.Identifier(c) for c in others)
    source = sql.SQL(", ").join(sql.Identifier("o", c) for c in others)
    with guards_off(trail.conn, "events"):
        trail.conn.execute("DROP INDEX audit.events_event_id_key")
        trail.conn.execute(sql.SQL(
            "UPDATE audit.events AS e SET ({}) = (SELECT {} FROM audit.events AS o"
            " WHERE o.id = CASE e.id WHEN %s THEN %s ELSE %s END) WHERE e.id IN (%s, %s)"
        ).format(assignment, source), [a, b, a, a, b])
    _expect(verify(trail.conn, KEYS), "reordered", 600, a)


def test_bytes_shifted_between_adjacent_fields(trail: Trail) -> None:
    # ("public", "items") becomes ("publ", "icitems")... the concatenation is unchanged.
    row = trail.conn.execute(
        "SELECT c.position, e.id, e.schema_name, e.table_name FROM audit.chain c"
        " JOIN audit.events e ON e.id = c.event_id WHERE e.table_name = 'items'"
        " ORDER BY c.position OFFSET 100 LIMIT 1").fetchone()
    assert row is not None
    position, victim, schema, table = row
    shifted = (schema[:-1], schema[-1] + table)
    assert encode_fields([schema, table]) != encode_fields(list(shifted))
    assert schema + table == shifted[0] + shifted[1]
    with guards_off(trail.conn, "events"):
        trail.conn.execute("UPDATE audit.events SET schema_name = %s, table_name = %s"
                           " WHERE id = %s", [*shifted, victim])
    _expect(verify(trail.conn, KEYS), "modified", position, victim)


def _truncate_tail(conn: psycopg.Connection[Any], head: int, count: int) -> None:
    with guards_off(conn, "events", "chain", "checkpoints"):
        conn.execute("DELETE FROM audit.events WHERE id IN"
                     " (SELECT event_id FROM audit.chain WHERE position > %s)", [head - count])
        conn.execute("DELETE FROM audit.chain WHERE position > %s", [head - count])
        conn.execute("DELETE FROM audit.checkpoints WHERE position > %s", [head - count])


def test_truncated_tail_needs_the_checkpoint_file(trail: Trail) -> None:
    _truncate_tail(trail.conn, trail.head, 50)
    alone = verify(trail.conn, KEYS)
    assert alone.valid
    assert not alone.anchored
    assert alone.status == "valid_unanchored"
    assert "unanchored" in alone.detail
    assert alone.exit_code == 0
    _expect(verify(trail.conn, KEYS, checkpoint_file=trail.file), "truncated",
            trail.head - 49, None)


def test_truncated_tail_off_a_checkpoint_shows_without_the_file(trail: Trail) -> None:
    with guards_off(trail.conn, "events", "chain", "checkpoints"):
        trail.conn.execute("DELETE FROM audit.chain WHERE position > %s", [trail.head - 30])
        trail.conn.execute("DELETE FROM audit.checkpoints WHERE position > %s",
                           [trail.head - 30])
    result = verify(trail.conn, KEYS)
    _expect(result, "bad_checkpoint", trail.head - 49, event_at(trail.conn, trail.head - 49))


def _chain_rows(conn: psycopg.Connection[Any], after: int) -> list[tuple[Any, ...]]:
    query = _sql.query("integrity", "chain_rows").format(
        columns=_sql.query("integrity", "canonical_columns"))
    return conn.execute(query, {"after": after}).fetchall()


def _rewrite_with_hmac_key(conn: psycopg.Connection[Any], victim_position: int,
                           file: Path) -> None:
    """What an insider holding the HMAC key can do: edit, rehash, re-MAC everything."""
    victim = event_at(conn, victim_position)
    chain_id_row = conn.execute("SELECT chain_id::text FROM audit.chains").fetchone()
    assert chain_id_row is not None
    chain_id = chain_id_row[0]
    prev_row = conn.execute("SELECT entry_hash FROM audit.chain WHERE position = %s",
                            [victim_position - 1]).fetchone()
    prev = bytes(prev_row[0]) if prev_row else GENESIS
    heads: dict[int, bytes] = {}
    with guards_off(conn, "events", "chain", "checkpoints"):
        conn.execute("UPDATE audit.events SET app_user_id = 'innocent' WHERE id = %s", [victim])
        for row in _chain_rows(conn, victim_position - 1):
            content = hashlib.sha256(CONTENT_TAG + encode_fields(row[4:])).digest()
            prev = entry_hash_from_content(chain_id, row[0], prev, row[3], content)
            heads[row[0]] = prev
            conn.execute("UPDATE audit.chain SET content_hash = %s, entry_hash = %s"
                         " WHERE position = %s", [content, prev, row[0]])
        cps = conn.execute("SELECT seq, chain_id::text, position, entry_count, head_hash,"
                           " last_event_id, created_at, key_id, mac, sig_key_id, signature"
                           " FROM audit.checkpoints ORDER BY seq").fetchall()
        names = ["seq", "chain_id", "position", "entry_count", "head_hash", "last_event_id",
                 "created_at", "key_id", "mac", "sig_key_id", "signature"]
        forged: list[Checkpoint] = []
        for values in cps:
            cp = checkpoint_from_row(dict(zip(names, values, strict=True)))
            if cp.position in heads:
                message = dataclasses.replace(cp, head=heads[cp.position]).message()
                mac = hmac.digest(HMAC_SECRET, message, "sha256")
                cp = dataclasses.replace(cp, head=heads[cp.position], mac=mac)
                conn.execute("UPDATE audit.checkpoints SET head_hash = %s, mac = %s"
                             " WHERE seq = %s", [cp.head, cp.mac, cp.seq])
            forged.append(cp)
    file.write_text("".join(json.dumps(c.to_json()) + "\n" for c in forged))


def test_rewrite_with_the_hmac_key_passes_hmac_but_not_ed25519(
    conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    signer = Ed25519PrivateKey.generate()
    sealing = KeyRing.build({"k1": HMAC_SECRET}, current_kid="k1", signing_key=signer)
    build_trail(conn, 1000)
    sink = JsonlSink(tmp_path / "cp.jsonl")
    head = _seal_in_steps(conn, sealing, sink)
    auditor = KeyRing.build(public_keys=[signer.public_key()])
    assert verify(conn, auditor, checkpoint_file=sink.path).status == "valid"

    _rewrite_with_hmac_key(conn, 500, sink.path)
    # The documented limit: whoever holds the HMAC key and every copy can rewrite history.
    hmac_only = verify(conn, KEYS, checkpoint_file=sink.path)
    assert hmac_only.valid
    assert hmac_only.checked == head
    # The signature was made over the old head: the auditor's public key catches it.
    _expect(verify(conn, auditor, checkpoint_file=sink.path), "bad_checkpoint", 401,
            event_at(conn, 401))
    both = KeyRing.build({"k1": HMAC_SECRET}, public_keys=[signer.public_key()])
    _expect(verify(conn, both), "bad_checkpoint", 401, event_at(conn, 401))


def test_restored_backup_is_a_rollback(
    cluster: Any, database: str, tmp_path: Path
) -> None:
    sink = JsonlSink(tmp_path / "cp.jsonl")
    with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
        build_trail(conn, 600)
        seal(conn, KEYS, sinks=[sink], batch_size=200)
        sealed_row = conn.execute("SELECT max(position) FROM audit.chain").fetchone()
        assert sealed_row is not None
        sealed = int(sealed_row[0])
    backup = cluster.create_database(template=database)
    try:
        with psycopg.connect(cluster.dsn(database), autocommit=True) as conn:
            build_trail(conn, 1000)
            seal(conn, KEYS, sinks=[sink], batch_size=200)
        with psycopg.connect(cluster.dsn(backup), autocommit=True) as old:
            # Restored as is: the file knows of entries the database lacks.
            _expect(verify(old, KEYS, checkpoint_file=sink.path), "truncated", sealed + 1, None)
            # The sealer refuses to write on top of it with the file in hand...
            build_trail(old, 700)
            with pytest.raises(Exception, match="ahead of the database"):
                seal(old, KEYS, sinks=[sink])
            # ...but an attacker seals without it; the file still tells.
            seal(old, KEYS)
            assert verify(old, KEYS).valid
            _expect(verify(old, KEYS, checkpoint_file=sink.path), "rolled_back", sealed + 1,
                    event_at(old, sealed + 1))
    finally:
        cluster.drop_database(backup)


@pytest.mark.parametrize(("change", "params", "keys", "kind"), [
    ("entry_count = entry_count + 1", [], KEYS, "bad_checkpoint"),
    ("head_hash = %s", [b"\x01" * 32], KEYS, "bad_checkpoint"),
    ("key_id = 'k2'", [], hmac_keys(k2=OTHER_SECRET), "bad_checkpoint"),
    ("key_id = 'ghost'", [], KEYS, "unknown_key"),
    (None, [], KeyRing.build({"k2": OTHER_SECRET}), "unknown_key"),
])
def test_bad_checkpoints_are_never_valid(
    trail: Trail, change: str | None, params: list[Any], keys: KeyRing, kind: str
) -> None:
    if change is not None:
        with guards_off(trail.conn, "checkpoints"):
            trail.conn.execute(f"UPDATE audit.checkpoints SET {change} WHERE seq = 3", params)
        first = 401
    else:
        first = 1  # the key of every checkpoint was removed from the ring
    result = verify(trail.conn, keys)
    _expect(result, kind, first, event_at(trail.conn, first))
    assert result.exit_code == (2 if kind == "unknown_key" else 1)


def test_wrong_count_with_the_key_in_hand(trail: Trail) -> None:
    names = ["seq", "chain_id", "position", "entry_count", "head_hash", "last_event_id",
             "created_at", "key_id", "mac", "sig_key_id", "signature"]
    row = trail.conn.execute(
        "SELECT seq, chain_id::text, position, entry_count, head_hash, last_event_id,"
        " created_at, key_id, mac, sig_key_id, signature FROM audit.checkpoints"
        " WHERE seq = 3").fetchone()
    assert row is not None
    cp = checkpoint_from_row(dict(zip(names, row, strict=True)))
    forged = dataclasses.replace(cp, count=cp.count - 1)
    mac = hmac.digest(HMAC_SECRET, forged.message(), "sha256")
    with guards_off(trail.conn, "checkpoints"):
        trail.conn.execute("UPDATE audit.checkpoints SET entry_count = %s, mac = %s"
                           " WHERE seq = 3", [forged.count, mac])
    _expect(verify(trail.conn, KEYS), "bad_checkpoint", 401, event_at(trail.conn, 401))


# --- precedence: what is altered is named as such, whatever else is wrong ----------------


@pytest.mark.parametrize("offset", ["1 microsecond", "-1 microsecond"])
def test_a_forged_duplicate_is_named_a_duplicate(trail: Trail, offset: str) -> None:
    victim = event_at(trail.conn, 500)
    columns = [r[0] for r in trail.conn.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = 'audit.events'::regclass"
        " AND attnum > 0 AND NOT attisdropped AND attname NOT IN ('occurred_at', 'event_id')"
        " ORDER BY attnum").fetchall()]
    names = sql.SQL(", ").join(map(sql.Identifier, columns))
    trail.conn.execute(sql.SQL(
        "INSERT INTO audit.events ({names}, occurred_at) OVERRIDING SYSTEM VALUE"
        " SELECT {names}, occurred_at + {offset}::interval FROM audit.events WHERE id = {id}"
    ).format(names=names, offset=sql.Literal(offset), id=sql.Literal(victim)))
    result = verify(trail.conn, KEYS)
    _expect(result, "duplicate", 500, victim)
    assert result.exit_code == 1


def test_a_wrong_secret_is_a_key_mismatch_not_tampering(trail: Trail) -> None:
    wrong = KeyRing.build({"k1": OTHER_SECRET})
    result = verify(trail.conn, wrong)
    _expect(result, "key_mismatch", 1, event_at(trail.conn, 1))
    assert (result.status, result.exit_code) == ("unverifiable", 2)
    assert "does not match" in result.detail
    # With altered content as well, the alteration is what is reported.
    victim = event_at(trail.conn, 650)
    with guards_off(trail.conn, "events"):
        trail.conn.execute("UPDATE audit.events SET app_user_id = 'mallory' WHERE id = %s",
                           [victim])
    result = verify(trail.conn, wrong)
    _expect(result, "modified", 650, victim)
    assert (result.status, result.exit_code) == ("tampered", 1)


def test_modified_content_wins_over_a_checkpoint_with_an_unknown_key(trail: Trail) -> None:
    with guards_off(trail.conn, "checkpoints"):
        trail.conn.execute("UPDATE audit.checkpoints SET key_id = 'ghost' WHERE seq = 3")
    assert verify(trail.conn, KEYS).exit_code == 2  # alone: cannot verify
    victim = event_at(trail.conn, 700)
    with guards_off(trail.conn, "events"):
        trail.conn.execute("UPDATE audit.events SET app_user_id = 'mallory' WHERE id = %s",
                           [victim])
    result = verify(trail.conn, KEYS)
    _expect(result, "modified", 700, victim)
    assert (result.status, result.exit_code) == ("tampered", 1)
