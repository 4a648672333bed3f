"""Serve the Django example in its own process: ``python -m tests._django_server wsgi|asgi``.

Django's settings are per process, so each test runs its server in a subprocess. The
database comes from ``DATABASE_URL`` (see the example's settings). Migrates first, then
prints ``PORT <n>`` and serves on 127.0.0.1 until terminated:

- ``wsgi``: werkzeug's server with a fixed pool of 10 worker threads, so that Django's
  persistent connections (one per thread) make a pool of 10;
- ``asgi``: uvicorn.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

WORKERS = 10


def main(mode: str) -> None:
    faulthandler.register(signal.SIGUSR1)  # a stack dump of a hung server, on demand
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "audit_mw_examples.django_app.settings")
    import django  # noqa: PLC0415 - after settings
    from django.core.management import call_command  # noqa: PLC0415 - after settings

    django.setup()
    call_command("migrate", verbosity=0)
    from django.db import connections  # noqa: PLC0415 - after settings

    connections.close_all()
    if mode == "wsgi":
        _serve_wsgi()
    else:
        _serve_asgi()


def _announce(port: int) -> None:
    print(f"PORT {port}", flush=True)
    # Nobody reads on: later output (structlog's event lines) must not fill the pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def _serve_wsgi() -> None:
    from audit_mw_examples.django_app.wsgi import application  # noqa: PLC0415 - after settings
    from werkzeug.serving import BaseWSGIServer  # noqa: PLC0415 - after settings

    class PooledServer(BaseWSGIServer):
        """One request per connection (HTTP/1.0), handled by a fixed pool of threads."""

        def __init__(self) -> None:
            super().__init__("127.0.0.1", 0, application)
            self.socket.listen(1024)
            self.workers = ThreadPoolExecutor(WORKERS)

        def process_request(self, request: Any, client_address: Any) -> None:
            self.workers.submit(self._handle, request, client_address)

        def _handle(self, request: Any, client_address: Any) -> None:
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                self.shutdown_request(request)

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per request
    server = PooledServer()
    _announce(server.server_port)
    server.serve_forever()


def _serve_asgi() -> None:
    import uvicorn  # noqa: PLC0415 - after settings
    from audit_mw_examples.django_app.asgi import application  # noqa: PLC0415 - after settings

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _announce(sock.getsockname()[1])
    config = uvicorn.Config(application, log_level="warning", lifespan="off", backlog=1024)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1])
