"""A loopback TCP proxy that delays every packet, and counts the client's round trips.

Put between a client and PostgreSQL, it makes a network round trip visible above the noise
of a local socket: each chunk read from either side is written to the other side ``delay``
seconds after it was read, in order (chunks in flight overlap, as on a real link, so a
pipeline of several messages costs one delay each way, not one per message).

It also counts *turns* per connection: a turn starts when the client sends after the
server has sent (or first). With a delay far above the client's own work, that is the
number of times the client sent something and waited for an answer: its round trips.

Listens on 127.0.0.1 only; runs its own asyncio loop in a daemon thread.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import Any

import psycopg

__all__ = ["LatencyProxy", "latency_proxy"]

_CHUNK = 65536


class LatencyProxy:
    """The running proxy: :meth:`dsn` routes a server DSN through it; :attr:`turns` counts."""

    def __init__(self, target_host: str, target_port: int, delay: float) -> None:
        self.target = (target_host, target_port)
        self.delay = delay
        self.port = 0
        self._turns = 0
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stopped = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._run, name="latency-proxy", daemon=True)

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
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the latency proxy did not start")

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopped.set)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stopped.wait()
        # Connections still open (a client not closed yet): cut them, let the pumps end.
        for writer in self._writers:
            writer.close()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _handle(
        self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        try:
            server_reader, server_writer = await asyncio.open_connection(*self.target)
        except OSError:
            client_writer.close()
            return
        self._writers |= {client_writer, server_writer}
        last = ["server"]  # who sent last on this connection

        def client_sent() -> None:
            if last[0] == "server":
                with self._lock:
                    self._turns += 1
            last[0] = "client"

        def server_sent() -> None:
            last[0] = "server"

        try:
            await asyncio.gather(
                self._pump(client_reader, server_writer, client_sent),
                self._pump(server_reader, client_writer, server_sent),
            )
        finally:
            self._writers -= {client_writer, server_writer}

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Any
    ) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                if not data:
                    break
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(_CHUNK):
                seen()
                queue.put_nowait((time.monotonic() + self.delay, data))
        except OSError:
            pass  # the other side went away: the connection ends
        finally:
            queue.put_nowait((0.0, b""))
            with suppress(OSError, asyncio.CancelledError):
                await delivering
            writer.close()


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
