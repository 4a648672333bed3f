"""The live stream: every sealed event reaches the receiver at least once, in chain order,
across a SIGKILL of the streamer while writers write and the sealer seals, and across an
HTTP receiver that fails for a while; syslog (RFC 5424, UDP and TCP) and file sinks."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest

from audit_mw.integrity import seal
from audit_mw.stream import FileSink, HttpSink, Streamer, StreamState, SyslogSink
from tests._integrity import app_event, build_trail, hmac_keys

pytestmark = pytest.mark.db

KEYS = hmac_keys()
Conn = psycopg.Connection[Any]


class Receiver:
    """An HTTP endpoint collecting NDJSON batches; answers 500 to the first ``fail`` POSTs."""

    def __init__(self, fail: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.fail = fail
        self.failed = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                with receiver.lock:
                    if self.path.endswith("/reject"):
                        self.send_response(403)
                        self.end_headers()
                        return
                    if receiver.failed < receiver.fail:
                        receiver.failed += 1
                        self.send_response(500)
                        self.end_headers()
                        return
                    receiver.events += [json.loads(line) for line in body.splitlines()]
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ingest"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def ids(self) -> list[int]:
        with self.lock:
            return [int(e["id"]) for e in self.events]


@contextmanager
def receiver(fail: int = 0) -> Iterator[Receiver]:
    r = Receiver(fail)
    r.thread.start()
    try:
        yield r
    finally:
        r.server.shutdown()
        r.server.server_close()


def _chain_ids(conn: Conn) -> list[int]:
    return [int(r[0]) for r in conn.execute("SELECT event_id FROM audit.chain ORDER BY position")]


def _head(conn: Conn) -> int:
    row = conn.execute("SELECT coalesce(max(position), 0) FROM audit.chain").fetchone()
    assert row is not None
    return int(row[0])


def _streamer(dsn: str, target: str, state: Path, *extra: str) -> subprocess.Popen[bytes]:
    with (state.parent / "stream.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "audit_mw.cli", "--dsn", dsn, "stream", "--to", target,
             "--state-file", str(state), "--from", "start", "--batch", "20", "--interval",
             "0.05", *extra], stdout=subprocess.DEVNULL, stderr=log)


def _wait(condition: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


@contextmanager
def busy_trail(dsn: str) -> Iterator[list[int]]:
    """Two writers committing application events and a sealer sealing every 0.1 s, until
    the block ends; yields the number of events each writer wrote."""
    stop = threading.Event()
    written = [0, 0]

    def writer(slot: int) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            n = slot * 1_000_000
            while not stop.is_set():
                with conn.transaction():
                    for _ in range(3):
                        n += 1
                        app_event(conn, n)
                        written[slot] += 1
                time.sleep(0.005)

    def sealer() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                seal(conn, KEYS)
                time.sleep(0.1)

    threads = [threading.Thread(target=writer, args=(i,)) for i in (0, 1)]
    threads.append(threading.Thread(target=sealer))
    for t in threads:
        t.start()
    try:
        yield written
    finally:
        stop.set()
        for t in threads:
            t.join(30)


@pytest.mark.slow
def test_sigkill_mid_run_loses_nothing_while_writers_write_and_the_sealer_seals(
        dsn: str, tmp_path: Path) -> None:
    state = tmp_path / "stream.state"
    with receiver() as r, psycopg.connect(dsn, autocommit=True) as conn:
        with busy_trail(dsn) as written:
            first = _streamer(dsn, r.url, state)
            _wait(lambda: len(r.ids()) >= 150)
            first.send_signal(signal.SIGKILL)
            first.wait(10)
            killed_at = StreamState.load(state)
            assert killed_at is not None
            time.sleep(0.5)  # writers and the sealer carry on while no streamer runs
            assert _head(conn) > killed_at.position  # there was more to send
            second = _streamer(dsn, r.url, state)
            time.sleep(1.0)
        while seal(conn, KEYS).sealed:
            pass
        expected = _chain_ids(conn)
        try:
            _wait(lambda: set(expected) <= set(r.ids()))
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(10)
        got = r.ids()
        assert set(got) == set(expected)  # every sealed event, nothing extra
        assert len(expected) >= sum(written)
        assert len(got) - len(set(got)) <= 20  # at most the batch in flight, resent
        final = StreamState.load(state)
        assert final is not None
        assert final.position == len(expected)
        positions = [int(e["chain_position"]) for e in r.events]
        assert sorted(set(positions)) == list(range(1, len(expected) + 1))


def test_an_http_receiver_that_answers_500_for_a_while_gets_everything(
        conn: Conn, tmp_path: Path) -> None:
    build_trail(conn, 120)
    seal(conn, KEYS)
    with receiver(fail=4) as r:
        sink = HttpSink(r.url, backoff=0.01, max_backoff=0.05)
        streamer = Streamer(conn, sink, tmp_path / "s.state", start="start", batch=50,
                            interval=0.01)
        streamer.run(once=True)
        assert r.failed == 4
        assert r.ids() == _chain_ids(conn)  # once each, in chain order
    assert streamer.state.position == _head(conn)
    lag = streamer.report()
    assert (lag.behind, lag.lag_seconds) == (0, 0.0)


def test_a_new_stream_starts_at_the_head_by_default_and_resumes_from_its_state(
        conn: Conn, tmp_path: Path) -> None:
    build_trail(conn, 40)
    seal(conn, KEYS)
    out = tmp_path / "events.ndjson"
    state = tmp_path / "s.state"
    head = _head(conn)
    Streamer(conn, FileSink(out), state).run(once=True)
    assert not out.exists()  # only what is sealed from now on
    build_trail(conn, 80)
    seal(conn, KEYS)
    Streamer(conn, FileSink(out), state, start="start").run(once=True)  # the state wins
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [e["chain_position"] for e in lines] == list(range(head + 1, _head(conn) + 1))
    assert [e["id"] for e in lines] == _chain_ids(conn)[head:]
    # The CLI reports the lag from the same state file.
    build_trail(conn, 100)
    seal(conn, KEYS)
    lag = subprocess.run([sys.executable, "-m", "audit_mw.cli", "--dsn", conn.info.dsn,
                          "stream", "--state-file", str(state), "--lag"],
                         capture_output=True, text=True, check=True, env=_env(conn))
    report = json.loads(lag.stdout)
    assert report["behind"] == _head(conn) - int(lines[-1]["chain_position"]) > 0
    assert report["lag_seconds"] >= 0


def _env(conn: Conn) -> dict[str, str]:
    env = dict(os.environ)
    password = conn.info.password
    if password:
        env["PGPASSWORD"] = password
    return env


_RFC5424 = re.compile(
    rb'^<(\d+)>1 (\S+) (\S+) audit_mw - (\S+) \[audit@32473 id="(\d+)" position="(\d+)"\] '
    rb"\xef\xbb\xbf(\{.*\})$", re.DOTALL)


def _parse(message: bytes) -> dict[str, Any]:
    found = _RFC5424.match(message)
    assert found is not None, message[:200]
    event: dict[str, Any] = json.loads(found.group(7))
    assert int(found.group(5)) == event["id"]
    assert int(found.group(6)) == event["chain_position"]
    assert found.group(4).decode() == event["kind"]
    assert int(found.group(1)) == (13 * 8 + (4 if event.get("success") is False else 6))
    return event


def test_syslog_over_udp_and_tcp_is_rfc_5424(conn: Conn, tmp_path: Path) -> None:
    build_trail(conn, 30)
    seal(conn, KEYS)
    expected = _chain_ids(conn)

    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.settimeout(5)
    udp_sink = SyslogSink("127.0.0.1", udp.getsockname()[1])
    Streamer(conn, udp_sink, tmp_path / "u.state", start="start").run(once=True)
    udp_sink.close()
    got = [_parse(udp.recv(65535)) for _ in expected]
    udp.close()
    assert [e["id"] for e in got] == expected
    assert any(e.get("success") is False for e in got)

    server = socket.create_server(("127.0.0.1", 0))
    received = bytearray()

    def accept() -> None:
        client, _ = server.accept()
        with client:
            while chunk := client.recv(65536):
                received.extend(chunk)

    thread = threading.Thread(target=accept)
    thread.start()
    sink = SyslogSink("127.0.0.1", server.getsockname()[1], transport="tcp")
    Streamer(conn, sink, tmp_path / "t.state", start="start", batch=7).run(once=True)
    sink.close()
    thread.join(10)
    server.close()
    frames, data = [], bytes(received)
    while data:  # octet counting: LEN SP MSG
        length, _, rest = data.partition(b" ")
        frames.append(rest[: int(length)])
        data = rest[int(length):]
    assert [_parse(f)["id"] for f in frames] == expected


def test_http_retries_end_when_the_stream_stops_and_a_4xx_is_not_retried() -> None:
    from audit_mw.stream import SinkError  # noqa: PLC0415

    with receiver(fail=1000) as r:
        attempts: list[float] = []
        sink = HttpSink(r.url, backoff=0.01, sleep=attempts.append,
                        should_stop=lambda: len(attempts) >= 3)
        with pytest.raises(SinkError, match="HTTP 500; stopping"):
            sink.send([{"id": 1}])
        assert attempts == [0.01, 0.02, 0.04]  # exponential backoff
        assert r.failed == 4
    with receiver() as r:
        with pytest.raises(SinkError, match="refused the batch: HTTP 403"):
            HttpSink(r.url + "/reject", sleep=attempts.append).send([{"id": 1}])
        assert len(attempts) == 3  # no retry
        assert r.ids() == []
