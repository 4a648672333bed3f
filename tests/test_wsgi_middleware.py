"""WSGIAuditMiddleware: raw WSGI apps called directly, and a Flask app."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.util import FileWrapper, setup_testing_defaults

import flask
import pytest
import structlog

from audit_mw.context import AuditContext, current, set_user
from audit_mw.errors import ConfigurationError
from audit_mw.web.wsgi import WSGIAuditMiddleware, user_from_environ
from tests.test_proxy import PROXY_CASES, ProxyCase

EMPTY = AuditContext()
PEER = "203.0.113.9"

Environ = dict[str, Any]
StartResponse = Callable[..., Any]


@pytest.fixture(autouse=True)
def _clean_structlog() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()


def make_environ(**extra: Any) -> Environ:
    environ: Environ = {"REMOTE_ADDR": PEER}
    setup_testing_defaults(environ)
    environ.update(extra)
    return environ


class Recorder:
    """A start_response that keeps what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def __call__(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.calls.append((status, headers))
        return lambda data: None


def static_app(environ: Environ, start_response: StartResponse) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def run(app: Any, environ: Environ | None = None) -> tuple[list[bytes], Recorder]:
    """Call a WSGI app like a server: iterate, then close."""
    recorder = Recorder()
    result = app(environ or make_environ(), recorder)
    try:
        body = list(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return body, recorder


class Streamed:
    """A response iterable that records the context at each step and at close()."""

    def __init__(self, log: list[tuple[str, AuditContext]]) -> None:
        self.log = log
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        return self._chunks()

    def _chunks(self) -> Iterator[bytes]:
        for chunk in (b"a", b"b"):
            self.log.append(("next", current()))
            yield chunk

    def close(self) -> None:
        self.closed += 1
        self.log.append(("close", current()))


# --- the response iterable ------------------------------------------------------------------


def test_context_is_bound_while_the_iterable_runs_and_at_close() -> None:
    log: list[tuple[str, AuditContext]] = []
    streamed = Streamed(log)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        log.append(("call", current()))
        return streamed

    recorder = Recorder()
    result = WSGIAuditMiddleware(app)(make_environ(HTTP_X_REQUEST_ID="s-1"), recorder)
    # Nothing stays bound in the server's context between the steps.
    assert current() == EMPTY
    chunks = []
    for chunk in result:
        chunks.append(chunk)
        assert current() == EMPTY
    result.close()  # type: ignore[attr-defined]  # the wrapper has close()
    result.close()  # type: ignore[attr-defined]  # a second close is a no-op
    assert chunks == [b"a", b"b"]
    assert streamed.closed == 1
    assert [step for step, _ in log] == ["call", "next", "next", "close"]
    assert {context.request_id for _, context in log} == {"s-1"}
    assert current() == EMPTY


def test_iteration_in_another_thread_sees_the_request() -> None:
    log: list[tuple[str, AuditContext]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return Streamed(log)

    result = WSGIAuditMiddleware(app)(make_environ(REMOTE_USER="tess"), Recorder())
    worker = threading.Thread(target=lambda: (list(result), result.close()))  # type: ignore[attr-defined]
    worker.start()
    worker.join()
    assert [(step, context.user_id) for step, context in log] == [
        ("next", "tess"),
        ("next", "tess"),
        ("close", "tess"),
    ]


def test_generator_sees_set_user_and_structlog() -> None:
    seen: list[tuple[str | None, object]] = []

    def app(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        set_user("gina")
        yield b"x"
        seen.append((current().user_id, structlog.contextvars.get_contextvars().get("user_id")))

    body, _ = run(WSGIAuditMiddleware(app))
    assert body == [b"x"]
    # A generator's body runs during iteration, not during the call: the context is there,
    # with the login; structlog keeps the value bound at the start of the request.
    assert seen == [("gina", "anonymous")]
    assert structlog.contextvars.get_contextvars() == {}


def test_error_during_iteration_still_closes_and_leaves_nothing_bound() -> None:
    log: list[tuple[str, AuditContext]] = []

    class Failing(Streamed):
        def _chunks(self) -> Iterator[bytes]:
            yield b"a"
            raise RuntimeError("stream broke")

    failing = Failing(log)

    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return failing

    with pytest.raises(RuntimeError, match="stream broke"):
        run(WSGIAuditMiddleware(app, generate_request_id=lambda: "f-1"))
    assert failing.closed == 1
    assert [(step, context.request_id) for step, context in log] == [("close", "f-1")]
    assert current() == EMPTY


def test_error_in_the_call_leaves_nothing_bound() -> None:
    def app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        assert current().user_id == "anonymous"
        raise RuntimeError("boom")

    structlog.contextvars.bind_contextvars(request_id="outer")
    with pytest.raises(RuntimeError, match="boom"):
        WSGIAuditMiddleware(app)(make_environ(), Recorder())
    assert current() == EMPTY
    assert structlog.contextvars.get_contextvars() == {"request_id": "outer"}


def test_lists_and_file_wrappers_are_returned_as_they_are() -> None:
    body = [b"ok"]

    def listing(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [])
        return body

    assert WSGIAuditMiddleware(listing)(make_environ(), Recorder()) is body

    wrapped = FileWrapper(_BytesFile(b"data"))

    def sending(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return wrapped

    environ = make_environ()
    environ["wsgi.file_wrapper"] = FileWrapper
    assert WSGIAuditMiddleware(sending)(environ, Recorder()) is wrapped


class _BytesFile:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read(self, size: int = -1) -> bytes:
        data, self.data = self.data, b""
        return data


# --- what is recorded ---------------------------------------------------------------------------


def snapshot_app(seen: list[AuditContext]) -> Callable[[Environ, StartResponse], list[bytes]]:
    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(current())
        return static_app(environ, start_response)

    return app


def test_remote_user_anonymous_peer_and_user_agent() -> None:
    seen: list[AuditContext] = []
    app = WSGIAuditMiddleware(snapshot_app(seen), user_agent_max=4)
    run(app, make_environ(REMOTE_USER="ulla", HTTP_USER_AGENT="curl/8.0"))
    run(app, make_environ(HTTP_X_FORWARDED_FOR="1.1.1.1"))
    assert [(c.user_id, c.client_ip, c.user_agent) for c in seen] == [
        ("ulla", PEER, "curl"),
        ("anonymous", PEER, None),  # the forwarded header is not trusted by default
    ]


def test_user_from_environ() -> None:
    assert user_from_environ({"REMOTE_USER": "u"}) == "u"
    assert user_from_environ({"REMOTE_USER": ""}) is None
    assert user_from_environ({}) is None


def test_custom_user_resolver() -> None:
    seen: list[AuditContext] = []
    app = WSGIAuditMiddleware(snapshot_app(seen), user_resolver=lambda e: e.get("HTTP_X_USER"))
    run(app, make_environ(HTTP_X_USER="vic"))
    assert seen[0].user_id == "vic"


@pytest.mark.parametrize("case", PROXY_CASES, ids=lambda case: case.id)
def test_proxy_table(case: ProxyCase) -> None:
    seen: list[AuditContext] = []
    app = WSGIAuditMiddleware(
        snapshot_app(seen), trusted_proxies=case.trusted, forwarded_header=case.header
    )
    environ = make_environ()
    if case.peer is None:
        del environ["REMOTE_ADDR"]
    else:
        environ["REMOTE_ADDR"] = case.peer
    for name, value in case.headers:
        key = "HTTP_" + name.upper().replace("-", "_")
        # Servers join repeated header lines with commas (PEP 3333).
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    run(app, environ)
    assert [context.client_ip for context in seen] == [case.expected]


def test_request_id_accepted_generated_and_echoed() -> None:
    seen: list[AuditContext] = []
    app = WSGIAuditMiddleware(snapshot_app(seen))
    _, accepted = run(app, make_environ(HTTP_X_REQUEST_ID="w-1"))
    _, generated = run(app, make_environ(HTTP_X_REQUEST_ID="bad id"))
    assert seen[0].request_id == "w-1"
    assert accepted.calls == [("200 OK", [("Content-Type", "text/plain"), ("x-request-id", "w-1")])]
    new_id = seen[1].request_id
    assert new_id is not None
    assert len(new_id) == 32
    assert generated.calls[0][1][-1] == ("x-request-id", new_id)


def test_echo_keeps_the_apps_own_header_and_list() -> None:
    headers = [("X-Request-Id", "app-chosen")]

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", headers)
        return [b""]

    _, recorder = run(WSGIAuditMiddleware(app), make_environ(HTTP_X_REQUEST_ID="w-2"))
    assert recorder.calls == [("200 OK", [("X-Request-Id", "app-chosen")])]

    plain: list[tuple[str, str]] = []

    def other(environ: Environ, start_response: StartResponse) -> list[bytes]:
        start_response("204 No Content", plain)
        return []

    _, recorder = run(WSGIAuditMiddleware(other, request_id_header="X-Correlation-ID"))
    assert recorder.calls[0][1][0][0] == "X-Correlation-ID"
    assert plain == []  # the app's list is not changed


def test_no_echo_and_no_structlog() -> None:
    seen: list[object] = []

    def app(environ: Environ, start_response: StartResponse) -> list[bytes]:
        seen.append(structlog.contextvars.get_contextvars())
        return static_app(environ, start_response)

    _, recorder = run(WSGIAuditMiddleware(app, echo_request_id=False, bind_structlog=False))
    assert recorder.calls == [("200 OK", [("Content-Type", "text/plain")])]
    assert seen == [{}]


def test_bad_options_fail_at_construction() -> None:
    with pytest.raises(ConfigurationError, match="has host bits set"):
        WSGIAuditMiddleware(static_app, trusted_proxies=["10.0.0.1/8"])


# --- Flask ---------------------------------------------------------------------------------


def make_flask(**options: Any) -> flask.Flask:
    app = flask.Flask(__name__)

    @app.get("/whoami")
    def whoami() -> dict[str, Any]:
        context = current()
        return {
            "user_id": context.user_id,
            "client_ip": context.client_ip,
            "request_id": context.request_id,
            "log": structlog.contextvars.get_contextvars(),
        }

    @app.post("/login")
    def login() -> dict[str, Any]:
        set_user(flask.request.form["user"])
        return {"user_id": current().user_id}

    @app.get("/stream")
    def stream() -> flask.Response:
        def chunks() -> Iterator[str]:
            yield f"{current().user_id},"
            yield f"{current().request_id}"

        return flask.Response(chunks())

    app.wsgi_app = WSGIAuditMiddleware(app.wsgi_app, **options)  # type: ignore[method-assign]
    return app


def test_flask_request() -> None:
    client = make_flask().test_client()
    response = client.get(
        "/whoami",
        headers={"X-Request-ID": "fl-1", "X-Forwarded-For": "1.1.1.1"},
        environ_overrides={"REMOTE_ADDR": PEER, "REMOTE_USER": "fred"},
    )
    assert response.json == {
        "user_id": "fred",
        "client_ip": PEER,
        "request_id": "fl-1",
        "log": {"user_id": "fred", "client_ip": PEER, "request_id": "fl-1"},
    }
    assert response.headers.getlist("X-Request-ID") == ["fl-1"]
    assert current() == EMPTY


def test_flask_behind_a_trusted_proxy_and_login() -> None:
    client = make_flask(trusted_proxies=["10.0.0.0/8"]).test_client()
    response = client.get(
        "/whoami",
        headers={"X-Forwarded-For": "1.1.1.1, 198.51.100.4"},
        environ_overrides={"REMOTE_ADDR": "10.0.0.2"},
    )
    assert response.json is not None
    assert response.json["client_ip"] == "198.51.100.4"
    assert client.post("/login", data={"user": "gus"}).json == {"user_id": "gus"}


def test_flask_streamed_response_keeps_the_context() -> None:
    client = make_flask().test_client()
    response = client.get("/stream", headers={"X-Request-ID": "fl-2"})
    assert response.get_data(as_text=True) == "anonymous,fl-2"
    assert current() == EMPTY
