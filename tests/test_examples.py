"""Both example apps, served over real HTTP on 127.0.0.1, checked through their /audit."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
import uvicorn
from audit_mw_examples.flask_app.app import create_app as create_flask_app
from audit_mw_examples.shop import setup_database
from audit_mw_examples.starlette_app.app import create_app as create_starlette_app
from werkzeug.serving import make_server

from tests._shop import check_trail, run_story

pytestmark = pytest.mark.db


@pytest.fixture
def shop_dsn(dsn: str) -> str:
    return setup_database(dsn)


@pytest.fixture
def starlette_url(shop_dsn: str) -> Iterator[str]:
    app = create_starlette_app(shop_dsn, trusted_proxies=["127.0.0.1/32"])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            thread.join(0.05)
            assert thread.is_alive(), "uvicorn did not start"
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def flask_url(shop_dsn: str) -> Iterator[str]:
    app = create_flask_app(shop_dsn, trusted_proxies=["127.0.0.1/32"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)
        app.extensions["shop"].close()


def test_starlette_example(starlette_url: str) -> None:
    check_trail(run_story(starlette_url))


def test_flask_example(flask_url: str) -> None:
    check_trail(run_story(flask_url))
