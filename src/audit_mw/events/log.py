"""Emitting application events through structlog, for a SIEM or the app's own logs.

Every event produces exactly one structlog record with the same fields as the stored row
(``event_id``, ``kind``, ``action``, ``success``, ``reason``, ``app_user_id``,
``client_ip``, ``request_id``, ``user_agent``, ``resource_type``, ``resource_id``,
``metadata``, ``context_extra``), plus ``owasp_event`` (the nearest OWASP Logging
Vocabulary name) and the outcome:

- ``audit_mw.event`` (info): stored; with ``audit_id`` and ``occurred_at`` (database time)
  and ``duplicate`` when an earlier write with the same event id had stored it;
- ``audit_mw.event_spooled`` (error): the database was unavailable and the event went to
  the spool; with ``error`` and ``spool``. Alert on it: the trail is behind;
- ``audit_mw.event_write_failed`` (error): the event could not be stored and was not
  spooled; the call raised :class:`~audit_mw.errors.EventWriteError`. Alert on it;
- ``audit_mw.spool_replayed`` (info) / ``audit_mw.spool_replay_failed`` (error) /
  ``audit_mw.spool_line_rejected`` (error) / ``audit_mw.spool_record_rejected`` (error):
  replay progress and trouble.

The values were cleaned and redacted before they got here (see :mod:`audit_mw.events.redaction`):
none holds a control character, so even a line-oriented renderer cannot be made to split
or forge a line, and a JSON renderer always writes one object per line.
"""

from __future__ import annotations

from typing import Any

import structlog

__all__ = ["emit"]


def emit(logger_name: str, level: str, message: str, **fields: Any) -> None:
    """Emit one structured record; ``fields`` are already safe to log."""
    # Looked up per call: the application may configure structlog after importing us.
    logger = structlog.get_logger(logger_name)
    getattr(logger, level)(message, **fields)
