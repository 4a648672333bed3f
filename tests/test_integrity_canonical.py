"""The canonical encoding: a corpus of awkward values, hashed the same under any session
settings, from the database, from exported text and from decoded Python values."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb, set_json_loads

from audit_mw import _sql
from audit_mw.integrity import canonical_text, entry_hash, jsonb_text, parse_json, seal, verify
from audit_mw.integrity.canonical import (
    COLUMNS,
    CONTENT_COLUMNS,
    content_hash,
    encode_fields,
    entry_hash_from_content,
)
from audit_mw.integrity.chain import GENESIS, verify_entries
from audit_mw.integrity.seal import checkpoint_from_row
from tests._integrity import hmac_keys

KEYS = hmac_keys()
JSONB_COLUMNS = ("old_values", "new_values", "context_extra", "metadata")
ROOT = Path(__file__).resolve().parent.parent

TIMESTAMPS = [
    "2024-02-29 23:59:59+00", "2024-02-29 23:59:59.1+00", "2024-02-29 23:59:59.12+00",
    "2024-02-29 23:59:59.123+00", "2024-02-29 23:59:59.1234+05:30",
    "2024-02-29 23:59:59.12345-08", "2024-02-29 23:59:59.123456+00",
    "0999-01-01 00:00:00+00", "1999-12-31 23:00:00.000001-08",
]

JSON_DOCS = [
    '{"f": 0.1, "tiny": 1e-7, "negzero": -0.0, "trail": 1.500, "int": 100.000,'
    ' "exp": 1E+2, "big": 123456789012345678901234567890,'
    ' "neg": -12345678901234567890.123, "t": true, "n": null}',
    '{"nfc": "\u00e9", "nfd": "e\u0301", "emoji": "\U0001f986\U0001f469\u200d\U0001f4bb"}',
    '{"nested": {"a": [1, {"b": null, "aa": [[], {}]}], "": "empty key"}, "z": {}}',
    '{"esc": "quote\\" back\\\\ nl\\n tab\\t ctl\\u0001 del\u007f \\u00e9"}',
    '{"a": null}', '{}', '[]', '"scalar"', "0", "null", "-0", "1e400",
    '{"dup": 1, "dup": 2, "bb": 0, "a": 0, "\u00e9": 0, "b": 0}',
]

TEXTS = ["\u00e9", "e\u0301", "\U0001f986", "tab\tnew\nline", "", "NULL", "a,b"]
INETS = ["192.0.2.1", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32", "::ffff:1.2.3.4"]
ARRAYS = [["a", "b c", "NULL", "", 'qu"ote', None], [], ["\u00e9"]]

SETTINGS = [
    {},
    {"TimeZone": "Asia/Kathmandu", "DateStyle": "SQL, DMY", "extra_float_digits": "-15"},
    {"TimeZone": "America/St_Johns", "DateStyle": "German", "extra_float_digits": "3",
     "IntervalStyle": "sql_standard", "bytea_output": "escape"},
    {"TimeZone": "UTC", "DateStyle": "Postgres, MDY", "extra_float_digits": "0",
     "lc_messages": "C"},
]


def _insert_corpus(conn: psycopg.Connection[Any]) -> int:
    rows = 0
    n = max(len(TIMESTAMPS), len(JSON_DOCS), len(TEXTS), len(INETS))
    for i in range(n):
        conn.execute(
            "INSERT INTO audit.events (occurred_at, kind, action, record_id, app_user_id,"
            " metadata, context_extra, changed_fields, context_issues, client_ip, client_addr,"
            " event_id, success, reason, old_values, new_values)"
            " VALUES (%s, 'auth', 'login', %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s,"
            " %s, %s, %s, %s::jsonb, %s::jsonb)",
            [TIMESTAMPS[i % len(TIMESTAMPS)], TEXTS[i % len(TEXTS)],
             TEXTS[(i + 1) % len(TEXTS)], JSON_DOCS[i % len(JSON_DOCS)],
             JSON_DOCS[(i + 3) % len(JSON_DOCS)], ARRAYS[i % len(ARRAYS)],
             None if i % 2 else ARRAYS[(i + 1) % len(ARRAYS)], INETS[i % len(INETS)],
             None if i % 3 == 0 else INETS[(i + 2) % len(INETS)], uuid.uuid4(),
             [True, False, None][i % 3], TEXTS[(i + 2) % len(TEXTS)],
             JSON_DOCS[(i + 5) % len(JSON_DOCS)], JSON_DOCS[(i + 7) % len(JSON_DOCS)]])
        rows += 1
    return rows


def _options(settings: dict[str, str]) -> str:
    escaped = {k: v.replace(" ", "\\ ") for k, v in settings.items()}
    return " ".join(f"-c {k}={v}" for k, v in escaped.items())


def _exported(conn: psycopg.Connection[Any]) -> list[dict[str, Any]]:
    """The chain as an export carries it: every column as canonical text, plus chain fields."""
    query = _sql.query("integrity", "chain_rows").format(
        columns=_sql.query("integrity", "canonical_columns"))
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, {"after": 0})
        return [{**r, "entry_hash": bytes(r["entry_hash"]).hex(),
                 "content_hash": bytes(r["content_hash"]).hex()} for r in cur.fetchall()]


@pytest.mark.db
def test_corpus_verifies_under_any_session_settings(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        count = _insert_corpus(conn)
        assert seal(conn, KEYS, batch_size=5).sealed == count
        baseline = _exported(conn)
    failures = []
    for settings in SETTINGS:
        with psycopg.connect(dsn, autocommit=True, options=_options(settings)) as conn:
            shown = conn.execute("SHOW TimeZone").fetchone()
            assert shown is not None
            assert shown[0] == settings.get("TimeZone", shown[0])
            result = verify(conn, KEYS)
            if not result.valid or result.checked != count:
                failures.append((settings, result))
            if _exported(conn) != baseline:
                failures.append((settings, "export differs"))
    assert failures == []


@pytest.mark.db
def test_exported_rows_verify_offline_as_text_and_as_values(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _insert_corpus(conn)
        seal(conn, KEYS, batch_size=4)
        rows = _exported(conn)
        chain_id_row = conn.execute("SELECT chain_id::text FROM audit.chains").fetchone()
        assert chain_id_row is not None
        chain_id = chain_id_row[0]
        with conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_sql.query("integrity", "checkpoints").format(
                columns=_sql.query("integrity", "checkpoint_columns")))
            checkpoints = [checkpoint_from_row(r) for r in cur.fetchall()]
    # As text, exactly as exported.
    assert verify_entries(rows, checkpoints, KEYS, chain_id=chain_id).valid
    # Decoded: JSON parsed with Decimal, timestamps as datetimes.
    decoded = []
    for row in rows:
        values = dict(row)
        for column in ("old_values", "new_values", "context_extra", "metadata",
                       "changed_fields", "context_issues"):
            parsed = None if values[column] is None else parse_json(values[column])
            # A top-level JSON string stays text: a str in a jsonb column is JSON text.
            if parsed is not None and not isinstance(parsed, str):
                values[column] = parsed
        values["occurred_at"] = (dt.datetime.fromisoformat(values["occurred_at"])
                                 .astimezone(dt.timezone(dt.timedelta(hours=-3))))
        values["success"] = {None: None, "true": True, "false": False}[values["success"]]
        values["event_id"] = uuid.UUID(values["event_id"])
        decoded.append(values)
    assert verify_entries(decoded, checkpoints, KEYS, chain_id=chain_id).valid
    prev = GENESIS
    for row in decoded:
        prev_expected = entry_hash(row, prev, row["position"], chain_id)
        assert prev_expected.hex() == row["entry_hash"]
        prev = prev_expected
    # A changed value anywhere is caught, and named.
    tampered = [dict(r) for r in rows]
    tampered[5]["metadata"] = '{"a": 1}'
    result = verify_entries(tampered, checkpoints, KEYS, chain_id=chain_id)
    assert (result.kind, result.first_bad_position, result.first_bad_id) == (
        "modified", 6, rows[5]["id"])


@pytest.mark.db
def test_python_values_convert_to_the_database_text(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        _insert_corpus(conn)
        texts = conn.execute(sql_select_all()).fetchall()
        typed_conn = psycopg.connect(dsn, autocommit=True)
    with typed_conn:
        set_json_loads(parse_json, typed_conn)
        typed = typed_conn.execute(
            "SELECT * FROM audit.events ORDER BY id").fetchall()
    mismatches = []
    for text_row, typed_row in zip(texts, typed, strict=True):
        for column, text, value in zip(COLUMNS, text_row, typed_row, strict=True):
            if column in ("client_ip", "client_addr") and text == "::ffff:1.2.3.4":
                continue  # documented: give inet as the database prints it
            if column in JSONB_COLUMNS and value is None and text == "null":
                continue  # psycopg decodes JSON null as None: documented, pass text instead
            # psycopg decodes a bare JSON string to str: say it is a value, not JSON text.
            given = Jsonb(value) if column in JSONB_COLUMNS and isinstance(value, str) else value
            # id is the one column the statement leaves as a number.
            expected = str(text) if column == "id" else text
            if canonical_text(column, given) != expected:
                mismatches.append((column, text, value))
    assert mismatches == []


def sql_select_all() -> Any:
    return sql.SQL("SELECT {} FROM audit.events AS e ORDER BY e.id").format(
        _sql.query("integrity", "canonical_columns"))


@pytest.mark.parametrize(("text", "expected"), [
    ('{"b": 1, "a": 2, "aa": 3}', '{"a": 2, "b": 1, "aa": 3}'),
    ("[1.50, 1e-7, -0.0, 1E+2, 100]", "[1.50, 0.0000001, 0.0, 100, 100]"),
    ('"a\\u0001\\n\u00e9"', '"a\\u0001\\n\u00e9"'),
    ('{"x": null}', '{"x": null}'),
])
def test_jsonb_text_matches_postgresql(text: str, expected: str) -> None:
    assert jsonb_text(parse_json(text)) == expected


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError, match="float"):
        jsonb_text({"a": 0.1})


def test_missing_column_is_an_error_not_null() -> None:
    row = dict.fromkeys(COLUMNS)
    row["id"] = 1
    del row["reason"]
    with pytest.raises(ValueError, match="reason"):
        entry_hash(row, GENESIS, 1, uuid.uuid4())


def test_field_boundaries_are_part_of_the_hash() -> None:
    assert encode_fields(["ab", "c"]) != encode_fields(["a", "bc"])
    assert encode_fields([None]) != encode_fields([""])
    assert encode_fields(["\u00e9"]) != encode_fields(["e\u0301"])


VECTOR_CHAIN = "00000000-0000-4000-8000-000000000001"


def vector_row() -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row.update(id=42, occurred_at="2024-03-01T12:00:00.500000Z", kind="data", action="UPDATE",
               schema_name="public", table_name="items", record_id="7",
               old_values='{"price": 1.50}', new_values='{"price": 2.5}',
               changed_fields='["price"]', app_user_id="alice", client_ip="192.0.2.1",
               db_role="app", txid="750")
    return row


def test_documented_test_vectors() -> None:
    """docs/integrity.md quotes these bytes and hashes; they must stay true."""
    doc = (ROOT / "docs" / "integrity.md").read_text(encoding="utf-8")
    row = vector_row()
    content = content_hash([row[c] for c in CONTENT_COLUMNS])
    first = entry_hash_from_content(VECTOR_CHAIN, 1, GENESIS, 42, content)
    second = entry_hash(row | {"id": 43, "app_user_id": None}, first, 2, VECTOR_CHAIN)
    assert entry_hash(row, GENESIS, 1, VECTOR_CHAIN) == first
    for value in (encode_fields(["ab", None, "\u00e9"]).hex(), content.hex(), first.hex(),
                  second.hex()):
        assert re.search(value, doc), f"{value} is not in docs/integrity.md"
    block = doc.split("has the content encoding (hex)", 1)[1].split("and, in chain", 1)[0]
    assert "".join(block.split()) == encode_fields([row[c] for c in CONTENT_COLUMNS]).hex()
    assert Decimal("1.50") == Decimal("1.5")  # equal numbers, different stored text
