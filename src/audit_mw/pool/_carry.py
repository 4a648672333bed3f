"""Carrying the audit context with the statements themselves: no round trip of its own.

A connection is *instrumented* (``instrument_connection``): psycopg starts every
statement (``execute``, ``executemany``, ``copy``, ``stream``, server-side cursors, cursors
built by hand) by calling the connection's ``_start_query`` generator, which is where it
decides whether to send ``BEGIN``. The instrumented connection gets its own ``_start_query``
(an instance attribute: the class is untouched) that first compares the current context with
what the connection is known to carry, and, when they differ, sends the settings with a
message the statement needs anyway:

- **with the BEGIN** psycopg is about to send (not autocommit, no transaction open): in
  that ``BEGIN``'s own message, whatever runs the statement. **No round trip of their own,
  and no pipeline**;
- **inside a pipeline** (the audit cursors open one for ``execute`` when something must be
  sent and no ``BEGIN`` is due; psycopg opens one for ``executemany``; or the
  application's own): in front of the statement; the client sends both before it reads
  any answer. **No round trip of their own;**
- **otherwise** (``copy``, ``stream``, server-side cursors, hand-built cursors, inside a
  transaction or in autocommit): in a short pipeline of their own, before the statement
  (one round trip).

What is sent, by the connection's transaction status before the statement:

``IDLE`` (no transaction), a ``BEGIN`` due (not autocommit), outside a pipeline
    ``SET LOCAL`` of each setting that differs from what the session holds (all five when
    that is not known, and always in transaction mode), in the simple-protocol message of
    the ``BEGIN`` itself: ``BEGIN; SET LOCAL ...``. The client waits for that ``BEGIN``
    anyway, and nothing else is added: no pipeline, no statement of its own. The
    transaction carries it (``carried``) until it ends; no ``ROLLBACK TO SAVEPOINT`` can
    undo it, as no savepoint precedes it. In session mode, the first context of a
    connection, and a context that a third ``BEGIN`` in a row would carry, is set at session
    level instead (below, in a pipeline of the package's own with the ``BEGIN``), so that
    later transactions carry nothing, or only what differs from it.

``IDLE`` otherwise, session mode
    ``set_config(name, value, false)`` followed by a protocol Sync, which commits it in an
    implicit transaction of its own, *before* the ``BEGIN`` (sent right after, when the
    connection is not in autocommit). No later ``ROLLBACK`` can undo it. Recorded as known
    once its result is back.

``INTRANS`` (inside a transaction), or transaction mode without a ``BEGIN`` due
    ``set_config(name, value, true)``, transaction-local, in the same transaction as the
    statement: gone at the end of the transaction, when the session-level value (known, or
    re-sent at the next ``IDLE``) is back. Once one is sent, every later statement of that
    transaction re-sends it (``dirty``): a ``ROLLBACK TO SAVEPOINT`` can undo it, and a
    transaction begun by ``conn.transaction()`` is not seen starting. Transaction mode
    never sets anything at session level (behind PgBouncer the next transaction may run
    on another server session).

``INERROR`` / ``UNKNOWN``
    Nothing: the statement fails anyway.

What the ``BEGIN`` carried is dropped when the transaction may have ended without the
package seeing the next ``BEGIN``: psycopg's own ``COMMIT``, ``ROLLBACK`` and ``BEGIN``
(``commit()``, ``transaction()``, ``tpc_begin()``; the connection's ``_exec_command`` is
wrapped as ``_start_query`` is), a ``COMMIT``/``ROLLBACK`` tag among the results of an audit
cursor's statement (``COMMIT AND CHAIN``, ``COMMIT; BEGIN`` in one string), and any
statement of a pipeline after its first (earlier results are not read by the package).

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

from audit_mw._sql import query
from audit_mw.context import SETTING_NAMES, AuditContext, current
from audit_mw.errors import ConfigurationError
from audit_mw.pool._base import ContextMode, apply_statement, check_mode

if TYPE_CHECKING:
    from psycopg._pipeline_base import BasePipeline

__all__ = [
    "State",
    "after_statement",
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
    "suspend_context",
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
_BEGIN: Final = 3

#: The transaction that sets a context at session level, counting those in a row that used
#: it: ``SET LOCAL`` in a BEGIN costs a fraction of a session-level apply (see
#: bench/context_cost.py), which pays for itself over the transactions after it.
_PROMOTE_AT: Final = 3


class State:
    """What the client knows of one connection's ``audit.*`` settings."""

    __slots__ = (
        "active", "carried", "dirty", "hold", "known", "last", "last_uses", "mode", "pending",
        "pipeline",
        "pipeline_begin", "streamed",
    )

    def __init__(self) -> None:
        #: The context committed at session level, or None: unknown, send before the next
        #: statement.
        self.known: AuditContext | None = None
        #: A session-level apply queued in a pipeline, known once the pipeline is through.
        self.pending: AuditContext | None = None
        #: A transaction-local apply was sent and no idle state was seen since.
        self.dirty = False
        #: The context the open transaction carries, set with its BEGIN (``SET LOCAL`` in
        #: the BEGIN's message): no ``ROLLBACK TO SAVEPOINT`` can undo it. None outside
        #: such a transaction.
        self.carried: AuditContext | None = None
        #: The context the last BEGIN carried, and how many BEGINs in a row carried it: the
        #: one after that many (``_PROMOTE_AT``) sets it at session level instead.
        self.last: AuditContext | None = None
        self.last_uses = 0
        #: Send a new context's BEGIN in a pipeline with the first statement (one round trip
        #: fewer over a network, more client work), rather than in the BEGIN's own message.
        self.pipeline_begin = False
        #: The pipeline whose first statement was seen: only that statement may rely on what
        #: the BEGIN carried (the results of later ones' predecessors, such as a COMMIT AND
        #: CHAIN, are not read by the package). Weak, and compared by identity: a new
        #: pipeline may get the address, hence the id(), of one that is gone.
        self.pipeline: weakref.ref[Any] | None = None
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
        state.carried = None
        state.dirty = True


def suspend_context(conn: BaseConnection[Any]) -> None:
    """Statements on ``conn`` carry no context until :func:`instrument_connection` is called
    on it again.

    For a connection going back to a pool you manage (an ORM's): what its pool runs there
    (checks, resets) is nobody's action, and must not set a context at session level that a
    reset in the same breath would wipe out unseen. The audit pools do the same on return.
    No I/O; what the connection is known to hold is kept (see :func:`forget_context`).
    """
    state_of(conn).active = False


def _plan(
    state: State, conn: BaseConnection[Any], context: AuditContext, piped: bool,
    pending: bool = False,
) -> int:
    """What the next statement carries; ``pending``: earlier commands of the pipeline are
    not through yet (so the transaction they leave is not known)."""
    status = conn.pgconn.transaction_status
    if status == _IDLE:
        state.dirty = False
        state.carried = None
        if not piped and not conn.autocommit:
            return _plan_begin(state, context)
        if state.mode != "session":
            # Transaction-local in autocommit outside a pipeline would hold for nothing.
            return _local(state) if piped or not conn.autocommit else _NOTHING
        return _NOTHING if _is_known(state, context) else _SESSION
    if status == _INTRANS or (status == _ACTIVE and piped):
        return _plan_in_transaction(state, context, pending)
    return _NOTHING


def _is_known(state: State, context: AuditContext) -> bool:
    """Whether the session holds ``context`` already."""
    known = state.known
    if known is context:
        return True
    if known is not None and _same(known, context):
        state.known = context  # identity next time: the cheapest comparison
        return True
    return False


def _same(one: AuditContext, other: AuditContext) -> bool:
    """Whether two contexts set the same values: their cached settings, compared."""
    return one is other or one.setting_values() == other.setting_values()


def _plan_begin(state: State, context: AuditContext) -> int:
    """A BEGIN is due (outside a pipeline): what travels with it."""
    if state.mode != "session":
        return _BEGIN
    if _is_known(state, context):
        return _NOTHING
    last = state.last
    if last is None:
        # The first context of a connection: set at session level, committed before the
        # BEGIN, so that later BEGINs carry only the settings that differ from it.
        return _SESSION if state.known is None else _BEGIN
    if state.last_uses >= _PROMOTE_AT - 1 and _same(last, context):
        # A context that lasts (a job, a request of several transactions): at session
        # level, once, so that the transactions after this one carry nothing.
        return _SESSION
    # (After forget_context, all five, until a context lasts.)
    return _BEGIN


def _plan_in_transaction(state: State, context: AuditContext, pending: bool) -> int:
    carried = state.carried
    if state.dirty or (carried is not None and pending):
        # Sent mid-transaction (a ROLLBACK TO SAVEPOINT may undo it), or a COMMIT queued
        # before in the pipeline may have ended the transaction that carried it.
        return _local(state)
    if carried is None:
        if state.mode == "session" and _is_known(state, context):
            return _NOTHING
        return _local(state)
    if _same(carried, context):
        return _NOTHING
    return _local(state)


def _local(state: State) -> int:
    # Held back from a SET TRANSACTION: the next statement of the transaction carries it
    # (nothing is marked sent), and SET TRANSACTION itself writes no row.
    return _NOTHING if state.hold else _LOCAL


def must_send(conn: BaseConnection[Any]) -> bool:
    """Whether the next statement on ``conn`` carries settings in a pipeline with it."""
    state = _states.get(conn)
    if state is None or not state.active or state.streamed:
        return False
    if (
        not state.pipeline_begin
        and not conn.autocommit
        and conn.pgconn.transaction_status == _IDLE
    ):
        return False  # the BEGIN psycopg sends first carries it: no pipeline needed
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


class _ConnectionStep:
    """A step of psycopg's connection replaced on one instance: knows its connection and state."""

    __slots__ = ("__weakref__", "_conn", "state")

    def __init__(self, conn: BaseConnection[Any], state: State) -> None:
        # Weak: the connection holds this object, which must not keep it alive.
        self._conn = weakref.ref(conn)
        self.state = state


class _StartQuery(_ConnectionStep):
    """The ``_start_query`` of an instrumented connection; see the module docstring."""

    __slots__ = ()

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
        pending = False
        if pipeline is not None:
            seen = state.pipeline
            pending = (seen is not None and seen() is pipeline) or bool(
                pipeline.command_queue or pipeline.result_queue)
            state.pipeline = weakref.ref(pipeline)
        plan = _plan(state, conn, context, pipeline is not None, pending)
        if plan == _NOTHING:
            yield from original(conn)
            return

        if plan == _BEGIN:
            yield from _begin_carrying(state, conn, context)
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
            if begin and plan == _SESSION:
                state.last = context
                state.last_uses = _PROMOTE_AT
        if not begin:
            # Autocommit or already in a transaction: psycopg's own step is a no-op, kept
            # for whatever later versions add to it.
            yield from original(conn)


class _ExecCommand(_ConnectionStep):
    """The ``_exec_command`` of an instrumented connection: psycopg's own ``COMMIT``,
    ``ROLLBACK`` and ``BEGIN`` (``commit()``, ``rollback()``, ``transaction()``) end or
    begin a transaction the statements do not see; what it carried is gone with it."""

    __slots__ = ()

    def __call__(self, command: Any, *args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        conn = self._conn()
        if conn is None:  # pragma: no cover - the caller holds the connection
            return None
        if _bounds_transaction(conn, command):
            # Before the command: if it fails, the transaction is over or unusable anyway.
            self.state.carried = None
            self.state.dirty = False
        return (yield from type(conn)._exec_command(conn, command, *args, **kwargs))


# What psycopg sends on its own that begins or ends a transaction; not SAVEPOINT, RELEASE
# or ROLLBACK TO, which leave a context carried since the BEGIN in place.
_BOUNDS: Final = re.compile(
    rb"\s*(?:BEGIN|START|COMMIT|END|ABORT|PREPARE|ROLLBACK(?!\s+TO\b))\b", re.IGNORECASE)


def _bounds_transaction(conn: BaseConnection[Any], command: Any) -> bool:
    if isinstance(command, str):
        command = command.encode()
    elif isinstance(command, sql.Composable):
        command = command.as_bytes(conn)
    return isinstance(command, bytes) and _BOUNDS.match(command) is not None


# Command tags of statements, run through a cursor, after which a transaction may go on
# without what its BEGIN carried: COMMIT AND CHAIN, ROLLBACK [AND CHAIN | TO SAVEPOINT] (the
# tag does not tell them apart), a multi-statement string with a COMMIT and a BEGIN.
_ENDING_TAGS: Final = frozenset({b"COMMIT", b"ROLLBACK", b"BEGIN", b"START TRANSACTION"})


def after_statement(conn: BaseConnection[Any], results: list[Any]) -> None:
    """A statement ran through an audit cursor: if it may have ended the transaction its
    BEGIN's context was carried by, that context is no longer taken as carried."""
    state = _states.get(conn)
    if state is None or state.carried is None:
        return
    for result in results:
        if result.command_status in _ENDING_TAGS:
            state.carried = None
            # Unsure what the transaction holds now (a ROLLBACK TO may have kept the BEGIN's
            # settings): every later statement of it sends the context again.
            state.dirty = True
            return


def _begin_carrying(
    state: State, conn: BaseConnection[Any], context: AuditContext
) -> Generator[Any, Any, None]:
    """Send the BEGIN with ``SET LOCAL`` of each setting the session does not hold, in one
    simple-protocol message: one round trip, the BEGIN's own."""
    pgconn = conn.pgconn
    message = _begin_message(conn._get_tx_start_command(), context, state.known, conn)
    # Unsure until the answer is read (a cancellation, a broken connection).
    state.dirty = True
    state.carried = None
    if state.last is context:
        state.last_uses += 1
    else:
        state.last = context
        state.last_uses = 1
    pgconn.send_query(message)
    error = None
    for result in (yield from execute(pgconn)):
        if result.status == _FATAL_ERROR and error is None:
            error = result
    if error is not None:
        raise errors.error_from_result(error, encoding=conn.info.encoding)
    state.dirty = False
    state.carried = context


def _begin_message(
    begin: bytes, context: AuditContext, known: AuditContext | None, conn: BaseConnection[Any]
) -> bytes:
    held = known.setting_values() if known is not None else _NOTHING_HELD
    parts = [begin]
    escape = None
    for set_local, value, old in zip(_set_locals(), context.setting_values(), held, strict=True):
        if value == old:
            continue
        if value.isascii() and "'" not in value and "\\" not in value:
            # ASCII with nothing to escape, which every client encoding PostgreSQL
            # accepts spells alike: quoted as is, as libpq would, without the call (a
            # request id, a user id, an address).
            parts.append(b"%s'%s'" % (set_local, value.encode("ascii")))
            continue
        if escape is None:
            escape = pq.Escaping(conn.pgconn).escape_literal
            encoding = conn.info.encoding
        parts.append(set_local + escape(value.encode(encoding)))
    return b"; ".join(parts)


#: What the session holds when it is not known: no setting, so every one is sent.
_NOTHING_HELD: Final = (None,) * len(SETTING_NAMES)


@functools.cache
def _set_locals() -> tuple[bytes, ...]:
    """``SET LOCAL`` of each setting of :data:`SETTING_NAMES`, up to its value."""
    heads = []
    for setting in SETTING_NAMES:
        schema, name = setting.split(".")
        statement = query("pool", "set_local").format(
            setting=sql.Identifier(schema, name), value=sql.SQL("%s")).as_bytes(None)
        head, tail = statement.split(b"%s")
        if tail.strip():  # pragma: no cover - the statement ends with its value
            raise RuntimeError("pool.sql: set_local must end with its value")
        heads.append(head)
    return tuple(heads)


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
    values = [value.encode(encoding) for value in context.setting_values()]
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


def install_hook(
    conn: BaseConnection[Any], mode: ContextMode, pipeline_begin: bool = False
) -> State:
    """Give ``conn`` its context-carrying ``_start_query``; return its state."""
    if not callable(getattr(type(conn), "_start_query", None)) or not callable(
        getattr(type(conn), "_exec_command", None)
    ):
        # Deny by default: without this step statements would run unattributed.
        raise ConfigurationError(
            f"psycopg {psycopg.__version__} has no statement-start step the audit context"
            " can ride with; use a psycopg version audit_mw supports (3.2 or 3.3)"
        )
    state = state_of(conn)
    state.mode = check_mode(mode)
    state.pipeline_begin = bool(pipeline_begin)
    hook = conn.__dict__.get("_start_query")
    if not isinstance(hook, _StartQuery):
        # An instance attribute shadows the class's method for this connection only.
        conn._start_query = _StartQuery(conn, state)  # type: ignore[method-assign]
    if not isinstance(conn.__dict__.get("_exec_command"), _ExecCommand):
        conn._exec_command = _ExecCommand(conn, state)  # type: ignore[method-assign]
    return state
