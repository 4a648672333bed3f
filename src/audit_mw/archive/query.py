"""Querying the archive with DuckDB, alone or together with the live trail.

:func:`duckdb` returns a DuckDB connection with the archive registered as the view
``audit_archive`` (every month's Parquet file, with the hive columns ``year`` and ``month``).
An archive on object storage is read through its fsspec filesystem, so no DuckDB extension
has to be downloaded. :func:`attach_live` adds the live trail of a time range as the table
``audit_live`` (read through psycopg into Arrow), and the view ``audit_all`` spans both.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

import psycopg

from audit_mw import _sql
from audit_mw.archive._store import Store, require
from audit_mw.integrity.canonical import COLUMNS

__all__ = ["attach_live", "duckdb"]


def duckdb(url: str, *, storage_options: Mapping[str, Any] | None = None,
           connection: Any = None) -> Any:
    """A DuckDB connection (new, or ``connection``) with the view ``audit_archive``."""
    ddb = require("duckdb")
    con = connection if connection is not None else ddb.connect()
    store = Store.open(url, storage_options)
    protocol = store.fs.protocol
    local = "file" in (protocol if isinstance(protocol, tuple) else (protocol,))
    if local:
        pattern = f"{store.root}/year=*/month=*/*.parquet"
    else:
        con.register_filesystem(store.fs)
        name = protocol[0] if isinstance(protocol, tuple) else protocol
        pattern = f"{name}://{store.root}/year=*/month=*/*.parquet"
    if not store.month_dirs():
        # An empty archive is an empty view of the same columns, not an error.
        con.execute("CREATE OR REPLACE VIEW audit_archive AS SELECT "
                    + ", ".join(f"NULL::{_type(c)} AS {c}" for c in COLUMNS)
                    + ", NULL::BIGINT AS chain_position, NULL::BIGINT AS year, "
                      "NULL::BIGINT AS month WHERE false")
        return con
    con.execute("CREATE OR REPLACE VIEW audit_archive AS SELECT * FROM read_parquet("
                "?, hive_partitioning = true)".replace("?", _literal(pattern)))
    return con


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _type(column: str) -> str:
    return {"id": "BIGINT", "txid": "BIGINT", "occurred_at": "TIMESTAMPTZ",
            "success": "BOOLEAN", "changed_fields": "VARCHAR[]",
            "context_issues": "VARCHAR[]"}.get(column, "VARCHAR")


def attach_live(con: Any, conn: psycopg.Connection[Any], *, start: dt.datetime | None = None,
                end: dt.datetime | None = None) -> Any:
    """Read the live trail's events in ``[start, end)`` (all when unbounded) into ``con`` as
    the table ``audit_live``, with the archive's columns, and define ``audit_all`` as the
    archive and the live events not in it."""
    pa = require("pyarrow")
    cur = conn.execute(_sql.query("archive", "live_rows").format(
        columns=_sql.query("integrity", "canonical_columns")), {"start": start, "end": end})
    rows = cur.fetchall()
    columns: list[list[Any]] = [list(col) for col in zip(*rows, strict=True)] if rows else [
        [] for _ in range(len(COLUMNS) + 1)]
    arrays = {"chain_position": pa.array(columns[0], pa.int64())}
    for i, column in enumerate(COLUMNS, start=1):
        values = columns[i]
        if column == "occurred_at":
            arrays[column] = pa.array(values, pa.string()).cast(pa.timestamp("us", tz="UTC"))
        elif column in ("id",):
            arrays[column] = pa.array(values, pa.int64())
        elif column == "txid":
            arrays[column] = pa.array([None if v is None else int(v) for v in values],
                                      pa.int64())
        elif column == "success":
            arrays[column] = pa.array([None if v is None else v == "true" for v in values],
                                      pa.bool_())
        elif column in ("changed_fields", "context_issues"):
            import json  # noqa: PLC0415

            arrays[column] = pa.array([None if v is None else json.loads(v) for v in values],
                                      pa.list_(pa.string()))
        else:
            arrays[column] = pa.array(values, pa.string())
    live = pa.table({c: arrays[c] for c in (*COLUMNS, "chain_position")})
    con.register("audit_live_arrow", live)
    con.execute("CREATE OR REPLACE TABLE audit_live AS SELECT * FROM audit_live_arrow")
    con.unregister("audit_live_arrow")
    names = ", ".join(COLUMNS)
    con.execute(f"CREATE OR REPLACE VIEW audit_all AS "  # noqa: S608  (fixed column names)
                f"SELECT {names}, chain_position FROM audit_archive "
                f"UNION ALL SELECT {names}, chain_position FROM audit_live "
                f"WHERE id NOT IN (SELECT id FROM audit_archive)")
    return con
