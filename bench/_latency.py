"""A loopback TCP proxy that delays every packet, and counts the client's round trips.

Put between a client and PostgreSQL, it makes a network round trip visible above the noise
of a local socket: each chunk read from either side is written to the other side ``delay``
seconds after it was read, in order (chunks in flight overlap, as on a real link, so a
pipeline of several messages costs one delay each way, not one per message).

It also counts *turns* per connection: a turn starts when the client sends after the
server has sent (or first). With a delay far above the client's own work, that is the
number of times the client sent something and waited for an answer: its round trips.

Listens on 127.0.0.1 only. Plain threads and blocking sockets (two per direction of each
connection): ``time.sleep`` keeps the delay within a fraction of a millisecond, where an
event loop's timers round up to whole milliseconds.
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import psycopg

__all__ = ["LatencyProxy", "latency_proxy"]

_CHUNK = 65536


class LatencyProxy:
    """The running proxy: :meth:`dsn` routes a server DSN through it; :attr:`turns` counts."""

    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self._turns = 0
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)  # to notice stop()
        self.port: int = self._listener.getsockname()[1]
        self._stopping = False

    @property
    def turns(self) -> int:
        """Client turns (round trips) counted so far, over every connection."""
        with self._lock:
            return self._turns

    def dsn(self, server_dsn: str) -> str:
        """``server_dsn`` with host and port pointing at the proxy."""
        params = psycopg.conninfo.conninfo_to_dict(server_dsn)
        params.update(host="127.0.0.1", port=str(self.port), sslmode="disable")
        return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in params.items()})

    def start(self) -> None:
        self._spawn(self._accept)

    def stop(self) -> None:
        self._stopping = True
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(5)
        for sock in [self._listener, *sockets]:
            sock.close()

    def _spawn(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="latency-proxy")
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._stopping:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._sockets |= {client, server}
            last = ["server"]  # who sent last on this connection

            def client_sent(last: list[str] = last) -> None:
                with self._lock:
                    if last[0] == "server":
                        self._turns += 1
                    last[0] = "client"

            def server_sent(last: list[str] = last) -> None:
                with self._lock:
                    last[0] = "server"

            self._pipe(client, server, client_sent)
            self._pipe(server, client, server_sent)

    def _pipe(self, source: socket.socket, sink: socket.socket, seen: Callable[[], None]) -> None:
        chunks: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            try:
                while data := source.recv(_CHUNK):
                    seen()
                    chunks.put((time.monotonic() + self.delay, data))
            except OSError:
                pass  # the other side went away: the connection ends
            chunks.put((0.0, b""))

        def write() -> None:
            try:
                while True:
                    due, data = chunks.get()
                    if not data:
                        break
                    wait = due - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    sink.sendall(data)
            except OSError:
                pass
            with suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

        self._spawn(read)
        self._spawn(write)


@contextmanager
def latency_proxy(server_dsn: str, delay: float = 0.001) -> Iterator[LatencyProxy]:
    """A proxy in front of the server of ``server_dsn``, stopped on exit."""
    params = psycopg.conninfo.conninfo_to_dict(server_dsn)
    proxy = LatencyProxy(str(params.get("host") or "127.0.0.1"), int(params.get("port") or 5432),
                         delay)
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()
