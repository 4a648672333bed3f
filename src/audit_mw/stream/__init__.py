"""The live stream: the trail's sealed events, in chain order, to stdout, a file, syslog
(RFC 5424) or an HTTP endpoint, at least once, resuming from a durable position.

See ``docs/archive.md`` ("The live stream"). :mod:`~audit_mw.stream.follow` reads the chain
and keeps the position; :mod:`~audit_mw.stream.sinks` delivers.
"""

from audit_mw.stream.follow import Lag, Streamer, StreamState, read_lag
from audit_mw.stream.sinks import (
    FileSink,
    HttpSink,
    Sink,
    SinkError,
    StdoutSink,
    SyslogSink,
    open_sink,
    syslog_message,
)

__all__ = [
    "FileSink",
    "HttpSink",
    "Lag",
    "Sink",
    "SinkError",
    "StdoutSink",
    "StreamState",
    "Streamer",
    "SyslogSink",
    "open_sink",
    "read_lag",
    "syslog_message",
]
