"""Both example apps, served over real HTTP on 127.0.0.1, checked through their /audit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from audit_mw_examples.flask_app.app import create_app as create_flask_app
from audit_mw_examples.shop import setup_database
from audit_mw_examples.starlette_app.app import create_app as create_starlette_app

from tests._serve import serve_asgi, serve_wsgi
from tests._shop import check_trail, run_story

pytestmark = pytest.mark.db


@pytest.fixture
def shop_dsn(dsn: str) -> str:
    return setup_database(dsn)


@pytest.fixture
def starlette_url(shop_dsn: str) -> Iterator[str]:
    with serve_asgi(create_starlette_app(shop_dsn, trusted_proxies=["127.0.0.1/32"])) as url:
        yield url


@pytest.fixture
def flask_url(shop_dsn: str) -> Iterator[str]:
    app = create_flask_app(shop_dsn, trusted_proxies=["127.0.0.1/32"])
    try:
        with serve_wsgi(app) as url:
            yield url
    finally:
        app.extensions["shop"].close()


def test_starlette_example(starlette_url: str) -> None:
    check_trail(run_story(starlette_url))


def test_flask_example(flask_url: str) -> None:
    check_trail(run_story(flask_url))
