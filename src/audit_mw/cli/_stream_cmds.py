"""stream: the trail's sealed events, live, to stdout, a file, syslog or HTTP."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from typing import Any

import structlog

from audit_mw.cli._connect import connect
from audit_mw.errors import ConfigurationError


def register(commands: Any) -> None:
    p = commands.add_parser(
        "stream", help="follow the trail in chain order and emit each sealed event as JSON, "
                       "at least once, resuming from a state file")
    p.add_argument("--to", default="-", metavar="SINK",
                   help="- (stdout, the default), a file path or file:PATH, "
                        "syslog+udp://HOST:PORT, syslog+tcp://HOST:PORT, or an http(s):// URL "
                        "(NDJSON batches, retried with backoff)")
    p.add_argument("--state-file", required=True, metavar="FILE",
                   help="where the last delivered chain position is kept (written after the "
                        "sink acknowledged)")
    p.add_argument("--from", dest="start", default="head", metavar="WHERE",
                   help="without a state file: head (only what is sealed from now on, the "
                        "default), start (everything in the trail) or a chain position")
    p.add_argument("--batch", type=int, default=500, help="events per batch (default 500)")
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls when caught up (default 1)")
    p.add_argument("--header", action="append", default=[], metavar="NAME:VALUE",
                   help="an HTTP header for the http(s) sink (e.g. an authorization token); "
                        "repeatable")
    p.add_argument("--once", action="store_true", help="stop when caught up with the head")
    p.add_argument("--lag", action="store_true",
                   help="print the stream's lag (from the state file) as JSON and exit")
    p.set_defaults(handler=cmd_stream)


def _start(text: str) -> str | int:
    if text in ("head", "start"):
        return text
    try:
        return int(text)
    except ValueError:
        raise ConfigurationError(f"--from: head, start or a chain position, not {text!r}"
                                 ) from None


def cmd_stream(args: argparse.Namespace) -> int:
    from audit_mw.stream import (  # noqa: PLC0415
        HttpSink,
        Streamer,
        StreamState,
        open_sink,
        read_lag,
    )

    if not structlog.is_configured():
        # Lag reports and retries go to stderr: stdout may be the stream itself.
        structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr),
                            processors=[structlog.processors.add_log_level,
                                        structlog.processors.TimeStamper(fmt="iso"),
                                        structlog.processors.JSONRenderer()])
    headers = {}
    for header in args.header:
        name, sep, value = header.partition(":")
        if not sep:
            raise ConfigurationError(f"--header expects NAME:VALUE, got {header!r}")
        headers[name.strip()] = value.strip()
    with connect(args) as conn:
        conn.autocommit = True
        if args.lag:
            from pathlib import Path  # noqa: PLC0415

            state = StreamState.load(Path(args.state_file))
            if state is None:
                raise ConfigurationError(f"no state file {args.state_file}")
            print(json.dumps(read_lag(conn, state.position).to_json()))
            return 0
        sink = open_sink(args.to, headers=headers)
        stopping: list[bool] = []

        def stop(signum: int, frame: Any) -> None:
            stopping.append(True)

        signal.signal(signal.SIGTERM, stop)
        if isinstance(sink, HttpSink):
            sink.should_stop = lambda: bool(stopping)
        streamer = Streamer(conn, sink, args.state_file, start=_start(args.start),
                            batch=args.batch, interval=args.interval)
        try:
            streamer.run(lambda: bool(stopping), once=args.once)
        finally:
            sink.close()
    print(json.dumps({"event": "audit_stream_stopped", "position": streamer.state.position}),
          file=sys.stderr)
    return 0
