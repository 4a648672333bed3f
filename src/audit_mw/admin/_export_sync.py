"""Reading one export from the database: the synchronous shell of ``write_export``.

Generated from ``admin/_export_async.py`` by ``tools/async_to_sync.py``: do not edit;
change the async source and regenerate.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.admin._export_format import (
    ExportChain,
    ExportStats,
    chain_params,
    checkpoint_columns,
    make_chain,
    range_params,
)
from audit_mw.admin.query import ExportRange

if TYPE_CHECKING:  # the writer's module imports this one
    from audit_mw.admin.export import ExportWriter

__all__ = ["BATCH_ROWS", "export_parts", "read_chain"]

#: Rows fetched from the server cursor at a time: the memory an export holds.
BATCH_ROWS: Final = 2000


def read_chain(
    conn: psycopg.Connection[Any], export: ExportRange, stats: ExportStats
) -> ExportChain | None:
    """What links the exported slice to the chain, read in the export's snapshot."""
    if stats.first_position is None or stats.last_position is None:
        return None
    cur = conn.execute(_sql.query("admin", "export_chain_id"))
    chain_id = cur.fetchone()
    cur = conn.execute(_sql.query("admin", "export_previous_hash"), {
        "position": stats.first_position - 1})
    previous = cur.fetchone()
    with conn.cursor(row_factory=dict_row) as dict_cur:
        dict_cur.execute(_sql.query("admin", "export_covering_checkpoint").format(
            columns=checkpoint_columns()), {"position": stats.last_position})
        checkpoint = dict_cur.fetchone()
    links: list[Any] = []
    if checkpoint is not None:
        cur = conn.execute(_sql.query("admin", "export_links"), chain_params(
            export, stats, int(checkpoint["position"])))
        links = cur.fetchall()
    return make_chain(chain_id, previous, checkpoint, links)


def export_parts(
    conn: psycopg.Connection[Any], export: ExportRange,
    new_writer: Callable[[list[str]], ExportWriter],
    *, limits: Mapping[str, str] | None = None,
) -> Generator[bytes, None, None]:
    """The export file's header, row batches and manifest, from one snapshot on ``conn``.

    ``new_writer`` makes the writer once the event columns are known; ``limits``
    (``total_ms``, ``idle_ms``) bound the statements and the idle transaction.
    """
    with conn.transaction():
        conn.execute(_sql.query("admin", "export_snapshot"))
        conn.execute(_sql.query("admin", "read_only"), {"timeout_ms": "0"})
        if limits is not None:
            conn.execute(_sql.query("admin", "export_limits"), dict(limits))
        cur = conn.execute(_sql.query("admin", "event_columns"))
        writer = new_writer([r[0] for r in cur.fetchall()])
        yield writer.header()
        with conn.cursor(name="audit_mw_export") as rows:
            rows.execute(_sql.query("admin", "export_rows"), range_params(export))
            while batch := rows.fetchmany(BATCH_ROWS):
                yield writer.rows(batch)
        yield writer.manifest(read_chain(conn, export, writer.stats))
