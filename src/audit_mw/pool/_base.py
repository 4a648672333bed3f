"""The pure core of the audit-aware pools: no I/O, shared by the sync and async shells.

What is decided here:

- which statement carries the context (``sql/pool.sql``) and with which parameters;
- whether a connection is in a state where applying makes sense, with the error to raise
  when it is not;
- which cursor class carries the context over an application's own cursor factory.
"""

from __future__ import annotations

import functools
from typing import Any, Final, Literal, TypeVar, get_args

from psycopg import BaseConnection, pq

from audit_mw._sql import statement
from audit_mw.errors import ConfigurationError

__all__ = [
    "ContextMode",
    "apply_statement",
    "check_local_apply",
    "check_mode",
    "check_session_apply",
    "derive_cursor_class",
    "register_cursor_class",
    "underlying_cursor_class",
]

#: ``"session"``: applied once per checkout, for the whole session (the default).
#: ``"transaction"``: applied inside each transaction, for transaction poolers (PgBouncer).
ContextMode = Literal["session", "transaction"]

_IDLE: Final = pq.TransactionStatus.IDLE



def check_mode(mode: object) -> ContextMode:
    """``mode`` if it is a valid :data:`ContextMode`, else a ConfigurationError."""
    allowed = get_args(ContextMode)
    if mode not in allowed:
        raise ConfigurationError(
            f"context_mode must be one of {', '.join(map(repr, allowed))}, not {mode!r}"
        )
    return mode  # type: ignore[return-value]  # narrowed by the membership test above


@functools.cache
def apply_statement(local: bool) -> bytes:
    """The statement that sets every ``audit.*`` setting; bytes, ready for execute()."""
    return statement("pool", "apply_local" if local else "apply_session").encode()


def check_session_apply(conn: BaseConnection[Any]) -> None:
    """Refuse a session-level apply inside a transaction: a rollback would undo it."""
    status = conn.pgconn.transaction_status
    if status != _IDLE:
        raise ConfigurationError(
            "cannot apply the audit context at session level: the connection is in"
            f" transaction status {pq.TransactionStatus(status).name}, and a ROLLBACK would"
            " undo it; apply it before the transaction starts, or pass local=True"
        )


def check_local_apply(conn: BaseConnection[Any]) -> None:
    """Refuse a transaction-local apply that would hold for no statement at all."""
    if conn.autocommit and conn.pgconn.transaction_status == _IDLE:
        raise ConfigurationError(
            "a transaction-local audit context does nothing on an autocommit connection"
            " outside a transaction: open one first (conn.transaction()), or apply at"
            " session level"
        )


_C = TypeVar("_C")


def derive_cursor_class(audit_class: type[_C], base: type[Any]) -> type[_C]:
    """``audit_class`` itself, or a subclass of it and of the connection's own ``base``.

    So that an application's cursor factory (``ClientCursor``, ``RawCursor``, its own)
    keeps working when the pool re-applies the context before each statement.
    """
    if issubclass(base, audit_class):
        return base
    if base in audit_class.__mro__:
        return audit_class
    key = (audit_class, base)
    derived = _derived.get(key)
    if derived is None:
        name = f"{audit_class.__name__}Over{base.__name__}"
        derived = type(name, (audit_class, base), {"__module__": audit_class.__module__})
        # setdefault: two threads deriving at once agree on one class.
        derived = _derived.setdefault(key, derived)
    return derived


def register_cursor_class(audit_class: type[Any], base: type[Any], derived: type[Any]) -> None:
    """Make :func:`derive_cursor_class` answer ``derived`` (a named public class) for ``base``."""
    _derived[audit_class, base] = derived


# Few entries: one per cursor factory an application uses.
_derived: dict[tuple[type[Any], type[Any]], type[Any]] = {}


def underlying_cursor_class(audit_class: type[Any], plain: type[_C], cls: type[_C]) -> type[_C]:
    """Undo :func:`derive_cursor_class`: the factory the connection had before checkout."""
    if cls is audit_class:
        return plain
    bases = cls.__bases__
    if len(bases) == 2 and bases[0] is audit_class:
        return bases[1]  # a class made by derive_cursor_class() or registered
    return cls
