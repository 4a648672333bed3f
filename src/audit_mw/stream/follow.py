"""Following the trail in chain order and handing each event to a sink, at least once.

The stream reads sealed chain entries after its stored position (``audit.chain`` by
position: sealed entries never change, and new ones only ever come after the head, so
reading by position cannot skip one), sends them to the sink, and only after the sink
acknowledged them writes the new position to its state file (written to a temporary file,
fsynced, renamed over the old one, the folder fsynced). A crash at any point repeats at most
the last batch; the receiver deduplicates by the event's ``id``. An event that retention has
dropped is sent as ``{"id": ..., "chain_position": ..., "dropped": true}``, so that the
receiver still sees every position.

Lag: after each batch (and at least every ``report_every`` seconds while idle) one
``audit_stream_lag`` structlog event gives the stored position, the sealed head, how many
sealed entries are still to send, and how old the last sent event is when some are pending.
Only sealed events are streamed: how far the sealer is behind the writers is the sealer's lag
(``audit-mw status``); seal every few seconds for a near-live stream.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import structlog
from psycopg.rows import dict_row

from audit_mw import _sql
from audit_mw.errors import StreamError
from audit_mw.stream.sinks import Sink, SinkError

__all__ = ["Lag", "StreamState", "Streamer", "read_lag"]

log = structlog.get_logger("audit_mw.stream")


@dataclass(frozen=True, slots=True)
class StreamState:
    """What the state file holds: the chain followed and the last position delivered."""

    chain_id: str | None
    position: int

    @classmethod
    def load(cls, path: Path) -> StreamState | None:
        """The stored state, or ``None`` when the file does not exist."""
        try:
            raw = json.loads(path.read_bytes())
            return cls(None if raw.get("chain_id") is None else str(raw["chain_id"]),
                       int(raw["position"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StreamError(f"state file {path} is unreadable ({exc}); refusing to guess a "
                              "position (fix it, or remove it and choose --from)") from exc

    def save(self, path: Path) -> None:
        """Write atomically and durably: a crash leaves the old state or the new one."""
        data = json.dumps({"v": 1, "chain_id": self.chain_id, "position": self.position,
                           "saved_at": dt.datetime.now(dt.UTC).isoformat()}).encode()
        folder = path.parent
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=folder)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@dataclass(frozen=True, slots=True)
class Lag:
    """How far the stream is behind the sealed head."""

    position: int
    head: int
    behind: int
    lag_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"position": self.position, "head": self.head, "behind": self.behind,
                "lag_seconds": round(self.lag_seconds, 3)}


def _head(conn: psycopg.Connection[Any]) -> tuple[int, dt.datetime | None]:
    row = conn.execute(_sql.query("stream", "head")).fetchone()
    return (0, None) if row is None else (int(row[0]), row[1])


def _age(conn: psycopg.Connection[Any], position: int) -> float:
    if position <= 0:
        return 0.0
    row = conn.execute(_sql.query("stream", "occurred_at"), {"position": position}).fetchone()
    if row is None or row[0] is None:
        return 0.0
    occurred: dt.datetime = row[0]
    return max(0.0, (dt.datetime.now(dt.UTC) - occurred).total_seconds())


def read_lag(conn: psycopg.Connection[Any], position: int) -> Lag:
    """The lag of a stream that delivered up to ``position``."""
    head, _ = _head(conn)
    behind = max(0, head - position)
    return Lag(position, head, behind, _age(conn, position + 1) if behind else 0.0)


def _event(position: int, event_id: int, text: str | None) -> dict[str, Any]:
    if text is None:
        return {"id": event_id, "chain_position": position, "dropped": True}
    event: dict[str, Any] = json.loads(text)
    event["chain_position"] = position
    return event


class Streamer:
    """Follows ``audit.chain`` from the state file's position and feeds ``sink``.

    ``start`` is the position to begin after when there is no state file yet: ``"head"``
    (only what is sealed from now on), ``"start"`` (everything still in the trail) or a
    number. :meth:`run` loops until ``stop()`` returns true (checked between batches);
    :meth:`step` delivers one batch and returns how many events it sent.
    """

    def __init__(
        self, conn: psycopg.Connection[Any], sink: Sink, state_file: str | os.PathLike[str],
        *, start: str | int = "head", batch: int = 500, interval: float = 1.0,
        report_every: float = 60.0,
    ) -> None:
        if conn.autocommit is False:
            raise StreamError("the stream's connection must be in autocommit mode")
        self.conn = conn
        self.sink = sink
        self.path = Path(state_file)
        self.batch = batch
        self.interval = interval
        self.report_every = report_every
        self.state = self._initial(start)
        self._reported = 0.0

    def _chain_id(self) -> str | None:
        row = self.conn.execute(_sql.query("stream", "chain_id")).fetchone()
        return None if row is None else str(row[0])

    def _initial(self, start: str | int) -> StreamState:
        chain_id = self._chain_id()
        stored = StreamState.load(self.path)
        if stored is not None:
            if stored.chain_id is not None and chain_id is not None and (
                    stored.chain_id != chain_id):
                raise StreamError(f"state file {self.path} follows chain {stored.chain_id}, "
                                  f"the database holds chain {chain_id}; refusing to stream")
            return StreamState(chain_id or stored.chain_id, stored.position)
        if start == "head":
            position = _head(self.conn)[0]
        elif start == "start":
            position = 0
        elif isinstance(start, int) and start >= 0:
            position = start
        else:
            raise StreamError(f"invalid start {start!r}: head, start or a position")
        state = StreamState(chain_id, position)
        state.save(self.path)
        return state

    def step(self) -> int:
        """Send the next batch of sealed events, then store the position; the count sent."""
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(_sql.query("stream", "next_entries"),
                        {"after": self.state.position, "limit": self.batch})
            rows = cur.fetchall()
        if not rows:
            return 0
        events = [_event(int(r["position"]), int(r["event_id"]), r["event"]) for r in rows]
        expected = self.state.position + 1
        if int(rows[0]["position"]) != expected:
            raise StreamError(f"chain position {expected} is missing from audit.chain; "
                              "run `audit-mw verify`")
        self.sink.send(events)  # raises SinkError: the position stays, the batch is resent
        self.state = StreamState(self.state.chain_id, int(rows[-1]["position"]))
        self.state.save(self.path)
        return len(events)

    def report(self) -> Lag:
        """Log the lag (``audit_stream_lag``) and return it."""
        lag = read_lag(self.conn, self.state.position)
        log.info("audit_stream_lag", **lag.to_json())
        self._reported = time.monotonic()
        return lag

    def run(self, stop: Callable[[], bool] = lambda: False, *, once: bool = False) -> None:
        """Stream until ``stop()`` (or, with ``once``, until caught up with the head)."""
        while not stop():
            try:
                sent = self.step()
            except SinkError as exc:
                log.warning("audit_stream_sink_failed", error=str(exc),
                            position=self.state.position)
                time.sleep(self.interval)
                continue
            if sent or time.monotonic() - self._reported >= self.report_every:
                self.report()
            if not sent:
                if once:
                    return
                time.sleep(self.interval)

