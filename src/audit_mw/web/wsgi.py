"""WSGI middleware that binds the audit context for each request.

Wrap the WSGI callable, for Flask the ``wsgi_app`` attribute, so that Flask's own
request handling runs inside the context::

    app.wsgi_app = WSGIAuditMiddleware(app.wsgi_app, trusted_proxies=["10.0.0.0/8"])

What "bound" means for a streamed response
------------------------------------------

A WSGI app runs in three steps: the call, the iteration of the returned iterable (a
generator body runs only then) and its ``close()``. The server may run the last two in
another thread or ``contextvars.Context`` than the call (async servers and bridges do),
and a ``ContextVar`` token can only be reset in the context that set it. So the
middleware binds and resets around the call itself, and then runs every ``next()`` and
the ``close()`` inside a copy of the request's context taken at the end of the call.
The guarantee: whenever application code runs for this request, in whatever thread, the
request's audit context (and its structlog values) are bound, including changes made
with :func:`~audit_mw.context.set_user`; nothing is left bound in the server's own
context in between. The inner iterable's ``close()`` is always called through the
wrapper's ``close()``, as PEP 3333 requires of the server.

Lists and tuples are returned as they are (iterating them runs no application code), and
so is an instance of the server's ``wsgi.file_wrapper``, to keep its sendfile path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextvars import Context, Token, copy_context
from typing import TYPE_CHECKING, Any

from audit_mw.context import bind, reset
from audit_mw.web._request import (
    bind_log_context,
    build_context,
    make_options,
    new_request_id,
    reset_log_context,
)
from audit_mw.web.proxy import TrustedProxies

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["WSGIAuditMiddleware", "user_from_environ"]


def user_from_environ(environ: WSGIEnvironment) -> str | None:
    """The default user resolver: ``REMOTE_USER`` when set and non-empty, else ``None``.

    ``None`` is recorded as ``anonymous``.
    """
    user = environ.get("REMOTE_USER")
    return user if isinstance(user, str) and user else None


def _environ_key(header: str) -> str:
    return "HTTP_" + header.upper().replace("-", "_")


class WSGIAuditMiddleware:
    """Bind an :class:`~audit_mw.context.AuditContext` around each WSGI request.

    Takes the same options as :class:`~audit_mw.web.asgi.AuditMiddleware`, with these
    sources: the user from ``user_resolver(environ)`` (default: ``REMOTE_USER``), the
    peer from ``REMOTE_ADDR``, headers from the ``HTTP_*`` keys (servers join repeated
    header lines with commas). See the module docstring for how long the context stays
    bound when the response is streamed. With ``echo_request_id`` the request id is added
    to the headers passed to ``start_response``, unless the app already set that header.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        trusted_proxies: Iterable[str] | str | TrustedProxies = (),
        forwarded_header: str = "x-forwarded-for",
        user_resolver: Callable[[WSGIEnvironment], str | None] | None = None,
        request_id_header: str = "x-request-id",
        trust_request_id: bool = True,
        generate_request_id: Callable[[], str] = new_request_id,
        echo_request_id: bool = True,
        user_agent_max: int = 512,
        bind_structlog: bool = True,
    ) -> None:
        self.app = app
        self.options = make_options(
            trusted_proxies=trusted_proxies,
            forwarded_header=forwarded_header,
            request_id_header=request_id_header,
            trust_request_id=trust_request_id,
            generate_request_id=generate_request_id,
            echo_request_id=echo_request_id,
            user_agent_max=user_agent_max,
            bind_structlog=bind_structlog,
        )
        self.user_resolver = user_from_environ if user_resolver is None else user_resolver
        self._id_key = _environ_key(self.options.request_id_header)
        trusted = self.options.trusted
        self._forwarded_key = _environ_key(trusted.header) if trusted else None
        # Echoed with the configured spelling; compared without regard to case.
        self._id_header = request_id_header

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        """Handle one WSGI request."""
        options = self.options
        forwarded_key = self._forwarded_key
        forwarded_value = environ.get(forwarded_key) if forwarded_key else None
        context = build_context(
            options,
            user_id=self.user_resolver(environ),
            peer=environ.get("REMOTE_ADDR") or None,
            forwarded=[forwarded_value] if forwarded_value else [],
            request_id=environ.get(self._id_key),
            user_agent=environ.get("HTTP_USER_AGENT"),
        )
        if options.echo_request_id:
            start_response = _echoing(start_response, self._id_header, str(context.request_id))

        token = bind(context)
        log_tokens: Mapping[str, Token[Any]] | None = None
        try:
            if options.bind_structlog:
                log_tokens = bind_log_context(context)
            result = self.app(environ, start_response)
            if isinstance(result, list | tuple):
                return result
            file_wrapper = environ.get("wsgi.file_wrapper")
            if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
                return result
            return _BoundIterable(result)
        finally:
            if log_tokens is not None:
                reset_log_context(log_tokens)
            reset(token)


def _echoing(start_response: StartResponse, name: str, value: str) -> StartResponse:
    lowered = name.lower()

    def start_response_with_request_id(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None, /
    ) -> Callable[[bytes], object]:
        for key, _ in headers:
            if key.lower() == lowered:
                break
        else:
            # A new list: the app may reuse the one it passed.
            headers = [*headers, (name, value)]
        return start_response(status, headers, exc_info)

    return start_response_with_request_id


class _BoundIterable:
    """A response iterable whose ``next()`` and ``close()`` run in the request's context."""

    __slots__ = ("_closed", "_context", "_iterable", "_iterator")

    def __init__(self, iterable: Iterable[bytes]) -> None:
        # Called while the request's context is bound: the copy carries it, and iter()
        # may run application code too.
        self._iterable = iterable
        self._context: Context = copy_context()
        self._closed = False
        try:
            self._iterator: Iterator[bytes] = iter(iterable)
        except BaseException:
            self.close()
            raise

    def __iter__(self) -> _BoundIterable:
        return self

    def __next__(self) -> bytes:
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        """Close the inner iterable, in the request's context; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        close = getattr(self._iterable, "close", None)
        if close is not None:
            self._context.run(close)
