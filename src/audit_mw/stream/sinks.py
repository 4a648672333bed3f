"""Where the stream sends events: stdout, a file, syslog (RFC 5424) or an HTTP endpoint.

A sink's :meth:`~Sink.send` returns only once the batch is acknowledged as well as the
transport allows (a file: written and fsynced; HTTP: a 2xx answer; syslog over TCP: the bytes
accepted by the connection; over UDP: sent, which acknowledges nothing), and raises
:class:`SinkError` otherwise. The streamer stores its position only after that, so a crash
or a failed send repeats events, never skips them.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol, TextIO

import structlog

from audit_mw.errors import ConfigurationError, StreamError

__all__ = [
    "FileSink",
    "HttpSink",
    "Sink",
    "SinkError",
    "StdoutSink",
    "SyslogSink",
    "open_sink",
]

log = structlog.get_logger("audit_mw.stream")

#: RFC 5424 facility 13, "log audit"; severities: informational, and warning for a failure.
FACILITY: Final = 13
INFO, WARNING = 6, 4
#: The enterprise number RFC 5612 reserves for documentation, for the structured data id.
SD_ID: Final = "audit@32473"


class SinkError(StreamError):
    """A batch could not be delivered (the streamer retries it; nothing is skipped)."""


class Sink(Protocol):
    """Delivers a batch of events (JSON-ready dicts) or raises :class:`SinkError`."""

    def send(self, events: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self) -> None: ...


def _line(event: Mapping[str, Any]) -> str:
    return json.dumps(event, separators=(",", ":"), ensure_ascii=False, default=str)


class StdoutSink:
    """One JSON object per line on stdout (or another text stream), flushed per batch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        try:
            self.stream.write("".join(_line(e) + "\n" for e in events))
            self.stream.flush()
        except OSError as exc:
            raise SinkError(f"stdout: {exc}") from exc

    def close(self) -> None:
        return None


class FileSink:
    """Appends one JSON object per line to a file and fsyncs it before acknowledging."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        data = "".join(_line(e) + "\n" for e in events).encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise SinkError(f"file {self.path}: {exc}") from exc

    def close(self) -> None:
        return None


def _sd_value(value: Any) -> str:
    # RFC 5424 section 6.3.3: escape '"', '\' and ']' in a PARAM-VALUE.
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def syslog_message(event: Mapping[str, Any], hostname: str, app_name: str = "audit_mw"
                   ) -> bytes:
    """One RFC 5424 message: the event's time, kind as MSGID, its id and chain position as
    structured data, and the event as JSON (UTF-8, with a BOM) as the message."""
    severity = WARNING if event.get("success") is False else INFO
    stamp = str(event.get("occurred_at") or "-")
    msgid = str(event.get("kind") or "-")[:32]
    sd = (f'[{SD_ID} id="{_sd_value(event.get("id"))}" '
          f'position="{_sd_value(event.get("chain_position"))}"]')
    header = f"<{FACILITY * 8 + severity}>1 {stamp} {hostname} {app_name} - {msgid} {sd} "
    return header.encode() + b"\xef\xbb\xbf" + _line(event).encode()


class SyslogSink:
    """RFC 5424 messages over UDP (one datagram each) or TCP (octet-counting framing,
    RFC 6587). TCP reconnects on the next send after an error."""

    def __init__(self, host: str, port: int, *, transport: str = "udp",
                 timeout: float = 10.0) -> None:
        if transport not in ("udp", "tcp"):
            raise ConfigurationError("syslog transport must be udp or tcp")
        self.address = (host, port)
        self.transport = transport
        self.timeout = timeout
        self.hostname = socket.gethostname() or "-"
        self._sock: socket.socket | None = None

    def _socket(self) -> socket.socket:
        if self._sock is None:
            if self.transport == "udp":
                self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            else:
                self._sock = socket.create_connection(self.address, timeout=self.timeout)
        return self._sock

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        try:
            sock = self._socket()
            for event in events:
                message = syslog_message(event, self.hostname)
                if self.transport == "udp":
                    sock.sendto(message, self.address)
                else:
                    sock.sendall(str(len(message)).encode() + b" " + message)
        except OSError as exc:
            self.close()
            raise SinkError(f"syslog {self.transport}://{self.address[0]}:{self.address[1]}: "
                            f"{exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass
class HttpSink:
    """POSTs each batch as NDJSON (``application/x-ndjson``); any 2xx acknowledges it.

    A failed POST (no connection, a timeout, a 5xx or 429 answer) is retried with exponential
    backoff from ``backoff`` seconds up to ``max_backoff``, ``retries`` times (``None``:
    until it succeeds, which is what at-least-once needs); another 4xx answer raises at once:
    the endpoint refuses the data, and retrying would not help.
    """

    url: str
    headers: Mapping[str, str] | None = None
    timeout: float = 30.0
    backoff: float = 0.5
    max_backoff: float = 30.0
    retries: int | None = None
    sleep: Callable[[float], None] = time.sleep
    #: Checked between retries: true ends them (the batch stays unacknowledged).
    should_stop: Callable[[], bool] = lambda: False

    def __post_init__(self) -> None:
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise ConfigurationError("the HTTP sink needs an http:// or https:// URL")

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(  # noqa: S310  (the scheme is checked above)
            self.url, data=body, method="POST",
            headers={"content-type": "application/x-ndjson", **dict(self.headers or {})})
        with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310
            answer.read()

    def send(self, events: Sequence[Mapping[str, Any]]) -> None:
        body = "".join(_line(e) + "\n" for e in events).encode()
        delay, attempt = self.backoff, 0
        while True:
            try:
                self._post(body)
            except urllib.error.HTTPError as exc:
                if exc.code < 500 and exc.code != 429:
                    raise SinkError(f"{self.url} refused the batch: HTTP {exc.code}") from exc
                reason = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                reason = str(getattr(exc, "reason", exc))
            else:
                return
            attempt += 1
            if self.should_stop():
                raise SinkError(f"{self.url}: {reason}; stopping before the batch was "
                                "acknowledged")
            if self.retries is not None and attempt > self.retries:
                raise SinkError(f"{self.url}: {reason} after {attempt} attempts")
            log.warning("audit_stream_retry", sink=_safe_url(self.url), reason=reason,
                        attempt=attempt, retry_in=round(delay, 2))
            self.sleep(delay)
            delay = min(delay * 2, self.max_backoff)

    def close(self) -> None:
        return None


def _safe_url(url: str) -> str:
    """``url`` without credentials or query (they may hold a token): never logged."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def open_sink(target: str, *, headers: Mapping[str, str] | None = None) -> Sink:
    """A sink from its description: ``-`` (stdout), ``file:PATH`` or a path,
    ``syslog+udp://HOST:PORT``, ``syslog+tcp://HOST:PORT``, ``http(s)://...``."""
    if target == "-":
        return StdoutSink()
    parts = urllib.parse.urlsplit(target)
    if parts.scheme in ("syslog", "syslog+udp", "syslog+tcp"):
        if not parts.hostname or not parts.port:
            raise ConfigurationError(f"syslog sink needs HOST:PORT: {target!r}")
        return SyslogSink(parts.hostname, parts.port,
                          transport="tcp" if parts.scheme == "syslog+tcp" else "udp")
    if parts.scheme in ("http", "https"):
        return HttpSink(target, headers=headers)
    if parts.scheme == "file":
        return FileSink(parts.path)
    if parts.scheme:
        raise ConfigurationError(f"unknown sink {parts.scheme!r}: use -, a path, file:, "
                                 "syslog+udp://, syslog+tcp://, http:// or https://")
    return FileSink(target)
