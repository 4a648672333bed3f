"""Attribute every statement of a SQLAlchemy engine: ``instrument_engine(engine)``.

Works for a sync ``Engine`` and an ``AsyncEngine`` on psycopg 3 (``postgresql+psycopg://``),
including Flask-SQLAlchemy's ``db.engine``. Before each statement the engine's connection is
made to carry the audit context current in the task or thread that runs it, so a user bound
after the connection was checked out (``set_user()`` in a FastAPI dependency that loaded the
user through the same session, Flask-Login's loader) is seen by the next statement. Nothing
is sent when the context did not change; a changed one costs one round trip. SQLAlchemy's
own pool needs no setting: what a connection carries is recorded per connection and
compared on every statement, so nothing of a previous checkout is ever taken for current.

Not covered: statements sent on the raw driver connection
(``conn.connection.driver_connection.execute(...)``), which bypass SQLAlchemy's events;
call :func:`audit_mw.pool.apply_context` first for those.
"""

from __future__ import annotations

from typing import Any, Final

from psycopg import AsyncConnection, Connection
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import await_only

from audit_mw.errors import ConfigurationError
from audit_mw.integrations._apply import ensure_context, ensure_context_async, forget

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
    """Make every statement of ``engine`` run with the current audit context.

    Idempotent. Refuses an engine whose driver is not psycopg 3
    (:class:`~audit_mw.errors.ConfigurationError`), since the context is applied through it.
    """
    sync_engine = _sync_engine(engine)
    if sync_engine.dialect.driver != "psycopg":
        raise ConfigurationError(
            f"instrument_engine() needs the psycopg 3 driver (postgresql+psycopg://), not"
            f" {sync_engine.dialect.name}+{sync_engine.dialect.driver}"
        )
    if getattr(sync_engine, _MARK, False):
        return
    event.listen(sync_engine, "before_cursor_execute", _before_cursor_execute)
    # A connection SQLAlchemy invalidates may have lost what it carried (a reconnect is a
    # new connection object, unknown anyway); forget it so that nothing is assumed.
    event.listen(sync_engine.pool, "invalidate", _forget_dbapi)
    event.listen(sync_engine.pool, "soft_invalidate", _forget_dbapi)
    setattr(sync_engine, _MARK, True)


def _before_cursor_execute(
    conn: Any, cursor: Any, statement: Any, parameters: Any, context: Any, executemany: bool
) -> None:
    driver = conn.connection.driver_connection
    if isinstance(driver, AsyncConnection):
        # Event handlers of an AsyncEngine run in SQLAlchemy's greenlet, where await_only
        # hands the coroutine to the event loop.
        await_only(ensure_context_async(driver))
    elif isinstance(driver, Connection):
        ensure_context(driver)
    else:
        raise ConfigurationError(
            f"audit_mw cannot apply the audit context through {type(driver).__name__};"
            " use the psycopg 3 driver"
        )


def _forget_dbapi(dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    if isinstance(driver, AsyncConnection | Connection):
        forget(driver)
