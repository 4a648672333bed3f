"""The Parquet archive: months of the trail on a local folder or object storage, verifiable
offline against the integrity chain, and queryable with DuckDB, Trino, Athena or Spark.

See ``docs/archive.md``. The modules: :mod:`~audit_mw.archive.write` (database to archive),
:mod:`~audit_mw.archive.verify` (offline verification) and :mod:`~audit_mw.archive.query`
(DuckDB). The optional dependencies (``audit-mw[archive]``: pyarrow, duckdb, fsspec, s3fs)
are imported only when an archive is used, so importing this package costs nothing.
"""

from audit_mw.archive.query import attach_live, duckdb
from audit_mw.archive.verify import (
    ArchiveProblem,
    ArchiveVerifyResult,
    verify_archive,
    verify_month,
)
from audit_mw.archive.write import ArchiveRun, MonthArchive, archive_months, archive_partition

__all__ = [
    "ArchiveProblem",
    "ArchiveRun",
    "ArchiveVerifyResult",
    "MonthArchive",
    "archive_months",
    "archive_partition",
    "attach_live",
    "duckdb",
    "verify_archive",
    "verify_month",
]
