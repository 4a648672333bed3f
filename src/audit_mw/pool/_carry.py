"""Carrying the audit context with the statements themselves: no round trip of its own.

A connection is *instrumented* (``instrument_connection``): psycopg starts every
statement (``execute``, ``executemany``, ``copy``, ``stream``, server-side cursors, cursors
built by hand) by calling the connection's ``_start_query`` generator, which is where it
decides whether to send ``BEGIN``. The instrumented connection gets its own ``_start_query``
(an instance attribute: the class is untouched) that first compares the current context with
what the connection is known to carry, and, when they differ, puts the ``set_config`` calls
in front of the statement:

- **inside a pipeline** (the audit cursors open one for ``execute`` when something must be
  sent; psycopg opens one for ``executemany``; or the application's own): the settings go
  in front of the statement, the client sends both before it reads any answer, and reads
  their results together with the statement's. **No round trip of their own.**
- **outside a pipeline** (``copy``, ``stream``, server-side cursors, hand-built cursors):
  they are sent in a short pipeline of their own, together with the ``BEGIN`` psycopg would
  have sent anyway when a transaction is due (no extra round trip then), else alone (one).

What is sent, by the connection's transaction status before the statement:

``IDLE`` (no transaction), session mode
    ``set_config(name, value, false)`` followed by a protocol Sync, which commits it in an
    implicit transaction of its own, *before* the ``BEGIN`` (sent right after, when the
    connection is not in autocommit). No later ``ROLLBACK`` can undo it. Recorded as known
    once its result is back.

``INTRANS`` (inside a transaction), or transaction mode
    ``set_config(name, value, true)``, transaction-local, in the same transaction as the
    statement: gone at the end of the transaction, when the session-level value (known, or
    re-sent at the next ``IDLE``) is back. Once one is sent, every later statement of that
    transaction re-sends it (``dirty``): a ``ROLLBACK TO SAVEPOINT`` can undo it, and a
    transaction begun by ``conn.transaction()`` is not seen starting. Transaction mode
    never sets anything at session level and sends the context with every statement of a
    transaction (behind PgBouncer the next transaction may run on another server session).

``INERROR`` / ``UNKNOWN``
    Nothing: the statement fails anyway.

Whenever the outcome is not certain (an error, a cancellation, the application's own
pipeline), the known context is dropped, so the next statement sends again: being unsure
costs a few microseconds on the server, never a round trip, never a wrong attribution.
"""

from __future__ import annotations

import functools
import re
import weakref
from collections.abc import Generator
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final

import psycopg
from psycopg import BaseConnection, errors, pq, sql
from psycopg.generators import execute, fetch_many, send
from psycopg.pq.abc import PGconn

from audit_mw.context import AuditContext, current
from audit_mw.errors import ConfigurationError
from audit_mw.pool._base import ContextMode, apply_statement, check_mode, setting_values

if TYPE_CHECKING:
    from psycopg._pipeline_base import BasePipeline

__all__ = [
    "State",
    "confirm",
    "expect",
    "forget_context",
    "hold",
    "install_hook",
    "leads_transaction",
    "must_send",
    "refuse_unattributed",
    "state_of",
    "streaming",
]

_IDLE: Final = pq.TransactionStatus.IDLE
_INTRANS: Final = pq.TransactionStatus.INTRANS
_ACTIVE: Final = pq.TransactionStatus.ACTIVE
_PIPELINE_SYNC: Final = pq.ExecStatus.PIPELINE_SYNC
_FATAL_ERROR: Final = pq.ExecStatus.FATAL_ERROR
_CONNECTION_OK: Final = pq.ConnStatus.OK

# Statements with their parameters, and protocol Syncs (None), in sending order.
_Commands = list[tuple[bytes, list[bytes] | None] | None]

_NOTHING: Final = 0
_SESSION: Final = 1
_LOCAL: Final = 2


class State:
    """What the client knows of one connection's ``audit.*`` settings."""

    __slots__ = ("active", "dirty", "hold", "known", "mode", "pending", "streamed")

    def __init__(self) -> None:
        #: The context committed at session level, or None: unknown, send before the next
        #: statement.
        self.known: AuditContext | None = None
        #: A session-level apply queued in a pipeline, known once the pipeline is through.
        self.pending: AuditContext | None = None
        #: A transaction-local apply was sent and no idle state was seen since.
        self.dirty = False
        self.mode: ContextMode = "session"
        #: Whether statements carry the context (a pooled connection: only while checked out).
        self.active = True
        #: A stream() ran and no statement outside a pipeline since: libpq (18) keeps its
        #: single-row mode into the next pipeline, whose first result then breaks psycopg.
        self.streamed = False
        #: The statement about to run must be the first of its transaction (``SET
        #: TRANSACTION``): nothing transaction-local may go in front of it.
        self.hold = False


# Weak keys: a discarded connection drops out by itself.
_states: weakref.WeakKeyDictionary[BaseConnection[Any], State] = weakref.WeakKeyDictionary()


def state_of(conn: BaseConnection[Any]) -> State:
    """The connection's state, created (everything unknown) on first use."""
    state = _states.get(conn)
    if state is None:
        state = _states.setdefault(conn, State())
    return state


def forget_context(conn: BaseConnection[Any]) -> None:
    """Forget what ``conn`` is known to carry: the next statement sends the context again.

    Call it after anything that may have changed the ``audit.*`` settings behind the
    package's back (``RESET ALL``, ``DISCARD ALL``, a pool's reset that runs them). It does
    no I/O and works on sync and async connections alike.
    """
    state = _states.get(conn)
    if state is not None:
        state.known = None
        state.pending = None
        state.dirty = True


def _plan(state: State, conn: BaseConnection[Any], context: AuditContext, piped: bool) -> int:
    status = conn.pgconn.transaction_status
    if status == _IDLE:
        state.dirty = False
        if state.mode != "session":
            # Transaction-local in autocommit outside a pipeline would hold for nothing.
            return _local(state) if piped or not conn.autocommit else _NOTHING
    elif status == _INTRANS or (status == _ACTIVE and piped):
        if state.dirty or state.mode != "session":
            return _local(state)
    else:
        return _NOTHING
    known = state.known
    if known is context:
        return _NOTHING
    if known is not None and known == context:
        state.known = context  # identity next time: the cheapest comparison
        return _NOTHING
    return _SESSION if status == _IDLE else _local(state)


def _local(state: State) -> int:
    # Held back from a SET TRANSACTION: the next statement of the transaction carries it
    # (nothing is marked sent), and SET TRANSACTION itself writes no row.
    return _NOTHING if state.hold else _LOCAL


def must_send(conn: BaseConnection[Any]) -> bool:
    """Whether the next statement on ``conn`` carries settings in a pipeline with it."""
    state = _states.get(conn)
    if state is None or not state.active or state.streamed:
        return False
    return _plan(state, conn, current(), True) != _NOTHING


def expect(conn: BaseConnection[Any]) -> None:
    """A pipeline of the package's own begins: only what it carries may be confirmed.

    (A session-level apply queued in the application's own pipeline, which may have been
    aborted before it ran, is never confirmed.)
    """
    state = _states.get(conn)
    if state is not None:
        state.pending = None


def confirm(conn: BaseConnection[Any]) -> None:
    """The pipeline begun after :func:`expect` went through: what it carried is known."""
    state = _states.get(conn)
    if state is not None and state.pending is not None:
        state.known = state.pending
        state.pending = None


# Statements that nothing transaction-local may precede: those that must come first in their
# transaction ("must be called before any query"), and those that cannot run inside a
# transaction block, which a pipelined set_config would open around them. None of them
# writes a row the triggers capture.
_LEADS_TRANSACTION: Final = re.compile(
    r"""(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*   # leading blanks and comments
    (?:
        SET\s+(?:(?:SESSION|LOCAL)\s+)?
            (?:TRANSACTION\b|transaction_(?:isolation|read_only|deferrable)\b)
      | VACUUM\b
      | (?:CREATE|DROP)\s+(?:DATABASE|TABLESPACE)\b
      | ALTER\s+SYSTEM\b
      | (?:CREATE\s+(?:UNIQUE\s+)?|DROP\s+)INDEX\s+CONCURRENTLY\b
      | REINDEX\b[^;]*\bCONCURRENTLY\b
    )""",
    re.IGNORECASE | re.VERBOSE | re.DOTALL,
)


def leads_transaction(conn: BaseConnection[Any], query: object) -> bool:
    """Whether ``query`` is a ``SET TRANSACTION``, a ``VACUUM`` or alike: see above."""
    if isinstance(query, bytes):
        text = query[:400].decode("utf-8", "replace")
    elif isinstance(query, str):
        text = query[:400]
    elif isinstance(query, sql.Composable):
        text = query.as_string(conn)[:400]
    else:
        return False
    return _LEADS_TRANSACTION.match(text) is not None


def hold(conn: BaseConnection[Any], held: bool) -> None:
    """Hold back (or no longer) transaction-local settings from the next statement."""
    state = _states.get(conn)
    if state is not None:
        state.hold = held


def streaming(conn: BaseConnection[Any]) -> None:
    """A ``stream()`` ran on ``conn``: the next statement is not pipelined."""
    state = _states.get(conn)
    if state is not None:
        state.streamed = True


def refuse_unattributed(conn: BaseConnection[Any], what: str) -> None:
    """Refuse ``copy()``/``stream()`` where the context could not hold for them.

    In transaction mode, on an autocommit connection outside a transaction, the context
    can only travel in the same implicit transaction as the statement, which needs a
    pipeline, and these cannot be pipelined.
    """
    state = _states.get(conn)
    if (
        state is not None
        and state.active
        and state.mode == "transaction"
        and conn.autocommit
        and conn.pgconn.transaction_status == _IDLE
    ):
        raise ConfigurationError(
            f"{what} in transaction context mode needs an open transaction, so that the"
            " audit context holds for it: run it inside conn.transaction()"
        )


@functools.cache
def _statement(local: bool) -> bytes:
    return apply_statement(local).replace(b"%s", b"$%d") % (1, 2, 3, 4, 5)


class _StartQuery:
    """The ``_start_query`` of an instrumented connection; see the module docstring."""

    __slots__ = ("__weakref__", "_conn", "state")

    def __init__(self, conn: BaseConnection[Any], state: State) -> None:
        # Weak: the connection holds this object, which must not keep it alive.
        self._conn = weakref.ref(conn)
        self.state = state

    def __call__(self) -> Generator[Any, Any, None]:
        conn = self._conn()
        if conn is None:  # pragma: no cover - the caller holds the connection
            return
        state = self.state
        original = type(conn)._start_query
        pipeline = conn._pipeline
        streamed = state.streamed
        if pipeline is None:
            state.streamed = False
        if not state.active:
            yield from original(conn)
            return
        context = current()
        plan = _plan(state, conn, context, pipeline is not None)
        if plan == _NOTHING:
            yield from original(conn)
            return

        pgconn = conn.pgconn
        encoding = conn.info.encoding
        begin = not conn.autocommit and pgconn.transaction_status == _IDLE
        commands = _commands(plan, state, context, begin and conn._get_tx_start_command(), encoding)
        if pipeline is not None:
            _queue(pipeline, pgconn, commands)
        else:
            if streamed:
                yield from _run_one_by_one(pgconn, commands, encoding)
            else:
                yield from _run_now(pgconn, commands, encoding)
            confirm(conn)
        if not begin:
            # Autocommit or already in a transaction: psycopg's own step is a no-op, kept
            # for whatever later versions add to it.
            yield from original(conn)



def _queue(pipeline: BasePipeline, pgconn: PGconn, commands: _Commands) -> None:
    """Put ``commands`` in front of the statement psycopg is about to queue in ``pipeline``.

    Straight into libpq's buffer when nothing else waits to be sent (fewer writes to the
    socket than psycopg's queue, which flushes after each command), else queued in order;
    either way their results are checked with the statement's.
    """
    direct = not pipeline.command_queue
    for command in commands:
        if direct:
            if command is None:
                pgconn.pipeline_sync()
            else:
                pgconn.send_query_params(*command)
        else:
            pipeline.command_queue.append(
                pgconn.pipeline_sync if command is None
                else functools.partial(pgconn.send_query_params, *command))
        pipeline.result_queue.append(None)


def _commands(
    plan: int, state: State, context: AuditContext, begin: bytes | bool, encoding: str
) -> _Commands:
    """What to send for ``plan``, and the state it leaves; ``begin``: the BEGIN that is due."""
    values = [value.encode(encoding) for value in setting_values(context)]
    commands: _Commands = []
    if plan == _SESSION:
        state.known = None
        state.pending = context
        commands.append((_statement(False), values))
        # The Sync ends the implicit transaction: committed before any BEGIN.
        commands.append(None)
        if isinstance(begin, bytes):
            commands.append((begin, None))
    else:
        state.pending = None
        state.dirty = True
        if isinstance(begin, bytes):
            commands.append((begin, None))
        commands.append((_statement(True), values))
    return commands


def _run_now(pgconn: PGconn, commands: _Commands, encoding: str) -> Generator[Any, Any, None]:
    """Send ``commands`` in a pipeline of their own and wait for every result."""
    if commands[-1] is not None:
        commands.append(None)
    syncs = commands.count(None)
    pgconn.enter_pipeline_mode()
    try:
        for command in commands:
            if command is None:
                pgconn.pipeline_sync()
            else:
                pgconn.send_query_params(*command)
        yield from send(pgconn)
        error = None
        while syncs:
            for result in (yield from fetch_many(pgconn)):
                if result.status == _PIPELINE_SYNC:
                    syncs -= 1
                elif result.status == _FATAL_ERROR and error is None:
                    error = result
        if error is not None:
            raise errors.error_from_result(error, encoding=encoding)
    finally:
        # After a broken connection or an interruption this fails too: the connection is
        # then unusable, and the error already on its way is the one to see.
        if pgconn.status == _CONNECTION_OK:
            with suppress(errors.Error):
                pgconn.exit_pipeline_mode()


def _run_one_by_one(
    pgconn: PGconn, commands: _Commands, encoding: str
) -> Generator[Any, Any, None]:
    """Send ``commands`` one at a time, outside pipeline mode (after a ``stream()``)."""
    for command in commands:
        if command is None:
            continue  # outside a pipeline each statement is synced on its own
        pgconn.send_query_params(*command)
        for result in (yield from execute(pgconn)):
            if result.status == _FATAL_ERROR:
                raise errors.error_from_result(result, encoding=encoding)


def install_hook(conn: BaseConnection[Any], mode: ContextMode) -> State:
    """Give ``conn`` its context-carrying ``_start_query``; return its state."""
    if not callable(getattr(type(conn), "_start_query", None)):
        # Deny by default: without this step statements would run unattributed.
        raise ConfigurationError(
            f"psycopg {psycopg.__version__} has no statement-start step the audit context"
            " can ride with; use a psycopg version audit_mw supports (3.2 or 3.3)"
        )
    state = state_of(conn)
    state.mode = check_mode(mode)
    hook = conn.__dict__.get("_start_query")
    if not isinstance(hook, _StartQuery):
        # An instance attribute shadows the class's method for this connection only.
        conn._start_query = _StartQuery(conn, state)  # type: ignore[method-assign]
    return state
