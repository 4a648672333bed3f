"""The database side: install the audit schema, turn capture on per table, check it.

- :mod:`audit_mw.capture.schema`: :func:`install` (idempotent; applies the migrations);
- :mod:`audit_mw.capture.tracking`: :func:`track`, :func:`untrack`, :func:`retrack` and
  :func:`status` (what is installed, compared with what the package shipped);
- :mod:`audit_mw.capture.partitions`: the monthly partitions of the audit table.
"""

from audit_mw.capture.schema import InstallResult, install
from audit_mw.capture.tracking import (
    Status,
    TableStatus,
    TrackedTable,
    retrack,
    status,
    track,
    untrack,
)

__all__ = [
    "InstallResult",
    "Status",
    "TableStatus",
    "TrackedTable",
    "install",
    "retrack",
    "status",
    "track",
    "untrack",
]
