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

On return to SQLAlchemy's pool (``checkin``) what the connection carries is kept when only
SQLAlchemy's own reset ran (its ``ROLLBACK`` or ``COMMIT``, which cannot undo settings made
at session level), so the next checkout's ``BEGIN`` carries only what differs (with one user
per request: the user id and the request id). It is forgotten when the pool has a ``reset``
listener, or a ``checkin`` listener of someone else, since either may run ``RESET ALL`` or
``DISCARD ALL`` (SQLAlchemy documents such a reset for PostgreSQL): the next checkout then
sends the whole context, still in the same round trip. Listeners are looked up at each
return, so one added after :func:`instrument_engine` counts. From its return to its next
checkout the connection's statements carry no context (:func:`~audit_mw.pool.suspend_context`):
a ``checkin`` listener that runs after this package's would otherwise carry the context
with its own statements, and its ``RESET ALL`` would then wipe out unseen what they set. A
connection SQLAlchemy invalidates is forgotten too; its replacement is instrumented when it
is opened.
"""

from __future__ import annotations

import weakref
from typing import Any, Final

from psycopg import AsyncConnection, Connection
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from audit_mw.errors import ConfigurationError
from audit_mw.pool import forget_context, instrument_connection, suspend_context

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
    event.listen(pool, "checkin", _ForgetOnCheckin(sync_engine))
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


class _ForgetOnCheckin:
    """The ``checkin`` listener: forgets what the connection carries when anything but
    SQLAlchemy's own rollback or commit may have run on return (see the module docstring)."""

    __slots__ = ("__weakref__", "_engine")

    def __init__(self, engine: Engine) -> None:
        # Weak: the engine's pool holds this listener. The engine, not its pool: dispose()
        # replaces the pool, and the new one inherits the listeners.
        self._engine = weakref.ref(engine)

    def __call__(self, dbapi_connection: Any, connection_record: Any) -> None:
        if dbapi_connection is None:  # None when the connection was invalidated
            return
        driver = _driver(dbapi_connection)
        # Whatever other checkin listeners run next is not a request's: no context, and no
        # session-level apply that their own RESET ALL would then wipe out unseen.
        suspend_context(driver)
        engine = self._engine()
        dispatch = engine.pool.dispatch if engine is not None else None
        if (
            dispatch is None
            or bool(dispatch.reset)
            or any(listener is not self for listener in dispatch.checkin)
        ):
            forget_context(driver)


def _forget(dbapi_connection: Any, connection_record: Any, exception: Any) -> None:
    if dbapi_connection is not None:
        forget_context(_driver(dbapi_connection))
