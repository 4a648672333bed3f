"""Attribute every statement of a SQLAlchemy engine: ``instrument_engine(engine)``.

Works for a sync ``Engine`` and an ``AsyncEngine`` on psycopg 3 (``postgresql+psycopg://``),
including Flask-SQLAlchemy's ``db.engine``. Every connection the engine's pool opens is
instrumented with :func:`audit_mw.pool.instrument_connection`: each statement carries the
audit context current in the task or thread that runs it, in the same round trip as the
statement, and only when the connection does not already hold it. So a user bound after the
connection was checked out (``set_user()`` in a FastAPI dependency that loaded the user
through the same session, Flask-Login's loader) is carried by the next statement, at no
extra round trip, and nothing of a previous checkout is ever taken for current: what a
connection holds is tracked per connection and compared before every statement.

On return to SQLAlchemy's pool (``checkin``) what the connection carries is forgotten, so
that whatever ran on return (SQLAlchemy's ROLLBACK cannot undo the settings, but a reset
handler of the app may run ``DISCARD ALL``) the next checkout's first statement sends the
context again: a few bytes in the same round trip, never a round trip of its own. A
connection SQLAlchemy invalidates is forgotten too; its replacement is instrumented when
it is opened.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection, Connection
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from audit_mw.errors import ConfigurationError
from audit_mw.pool import forget_context, instrument_connection

__all__ = ["instrument_engine", "is_instrumented"]

_MARK: Final = "_audit_mw_instrumented"


def _sync_engine(engine: Engine | AsyncEngine) -> Engine:
    if isinstance(engine, AsyncEngine):
        return engine.sync_engine
    if isinstance(engine, Engine):
        return engine
    raise ConfigurationError(
        f"instrument_engine() takes a SQLAlchemy Engine or AsyncEngine, not {type(engine).__name__}"
    )


def is_instrumented(engine: Engine | AsyncEngine) -> bool:
    """Whether :func:`instrument_engine` was called on ``engine``."""
    return bool(getattr(_sync_engine(engine), _MARK, False))


def instrument_engine(engine: Engine | AsyncEngine) -> None:
    """Make every statement of ``engine`` carry the current audit context.

    Idempotent; call it before the engine's first connection (right after
    ``create_engine``): connections already in its pool are instrumented when next checked
    out. Refuses an engine whose driver is not psycopg 3
    (:class:`~audit_mw.errors.ConfigurationError`).
    """
    sync_engine = _sync_engine(engine)
    if sync_engine.dialect.driver != "psycopg":
        raise ConfigurationError(
            f"instrument_engine() needs the psycopg 3 driver (postgresql+psycopg://), not"
            f" {sync_engine.dialect.name}+{sync_engine.dialect.driver}"
        )
    if getattr(sync_engine, _MARK, False):
        return
    pool = sync_engine.pool
    event.listen(pool, "connect", _instrument)
    # Idempotent and without I/O: also covers connections opened before this call.
    event.listen(pool, "checkout", _instrument_on_checkout)
    event.listen(pool, "checkin", _forget_on_checkin)
    event.listen(pool, "invalidate", _forget)
    event.listen(pool, "soft_invalidate", _forget)
    setattr(sync_engine, _MARK, True)


def _driver(dbapi_connection: Any) -> Connection[Any] | AsyncConnection[Any]:
    # An AsyncEngine's DBAPI connection is SQLAlchemy's adapter around psycopg's.
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if not isinstance(driver, Connection | AsyncConnection):
        raise ConfigurationError(
            f"audit_mw cannot carry the audit context through {type(driver).__name__};"
            " use the psycopg 3 driver"
        )
    return driver


def _instrument(dbapi_connection: Any, connection_record: Any) -> None:
    instrument_connection(_driver(dbapi_connection))


def _instrument_on_checkout(dbapi_connection: Any, connection_record: Any,
                            connection_proxy: Any) -> None:
    instrument_connection(_driver(dbapi_connection))


def _forget_on_checkin(dbapi_connection: Any, connection_record: Any) -> None:
    if dbapi_connection is not None:  # None when the connection was invalidated
        forget_context(_driver(dbapi_connection))


def _forget(dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
    if dbapi_connection is not None:
        forget_context(_driver(dbapi_connection))
