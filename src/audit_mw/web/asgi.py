"""ASGI middleware that binds the audit context for each HTTP and WebSocket request.

A pure ASGI middleware, not Starlette's ``BaseHTTPMiddleware``: that one runs the app in a
separate task, so context changes made by the app never come back to it. Nothing here
imports Starlette; the default user resolver only reads the ``scope["user"]`` that
Starlette's ``AuthenticationMiddleware`` (or anything compatible) puts there.

Order: the audit middleware must run *inside* the authentication middleware, so that the
user is known when the context is built::

    app = Starlette(
        routes=...,
        middleware=[
            Middleware(AuthenticationMiddleware, backend=...),  # outer: runs first
            Middleware(AuditMiddleware, trusted_proxies=["10.0.0.0/8"]),
        ],
    )
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from contextvars import Token
from typing import Any

from audit_mw.context import bind, reset
from audit_mw.errors import ConfigurationError
from audit_mw.web._request import (
    bind_log_context,
    build_context,
    make_options,
    new_request_id,
    reset_log_context,
)
from audit_mw.web.proxy import TrustedProxies

__all__ = ["AuditMiddleware", "user_from_scope"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_RESPONSE_STARTS = frozenset({"http.response.start", "websocket.accept"})


def user_from_scope(scope: Scope) -> str | None:
    """The default user resolver: the id of ``scope["user"]``, or ``None`` (anonymous).

    For an authenticated user (``user.is_authenticated`` true) it returns
    ``user.identity``, the stable id (Starlette's ``SimpleUser`` returns its username),
    falling back to ``user.display_name`` when ``identity`` is not implemented. No user,
    or an unauthenticated one, gives ``None``, which the middleware records as
    ``anonymous``. An authenticated user with neither raises ConfigurationError rather
    than being recorded as anonymous.
    """
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    for attribute in ("identity", "display_name"):
        try:
            value = getattr(user, attribute, None)
        except NotImplementedError:  # starlette.authentication.BaseUser's placeholder
            continue
        if isinstance(value, str) and value:
            return value
    raise ConfigurationError(
        f"authenticated user {type(user).__name__} has no identity or display_name;"
        " pass user_resolver= to AuditMiddleware"
    )


class AuditMiddleware:
    """Bind an :class:`~audit_mw.context.AuditContext` around each HTTP/WebSocket request.

    Per request it resolves the user (``user_resolver(scope)``, a plain synchronous
    function returning the user id or ``None`` for anonymous; it runs on the event loop,
    so it must not block), the client IP (the socket peer, or the client behind
    ``trusted_proxies``, see :mod:`audit_mw.web.proxy`), the request id (the
    ``request_id_header`` value when ``trust_request_id`` and it is at most 128
    well-formed characters, else ``generate_request_id()``) and the user agent (cut to
    ``user_agent_max`` characters, 0 to leave it out). The context is bound for the
    whole request and reset in ``finally``, also on errors and cancellation, and the same
    values are bound into structlog's contextvars when ``bind_structlog``.

    With ``echo_request_id`` the id is added to the response headers
    (``http.response.start``, ``websocket.accept``) unless the app already set that
    header. Lifespan and other scopes pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        trusted_proxies: Iterable[str] | str | TrustedProxies = (),
        forwarded_header: str = "x-forwarded-for",
        user_resolver: Callable[[Scope], str | None] | None = None,
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
        self.user_resolver = user_from_scope if user_resolver is None else user_resolver
        self._id_header = self.options.request_id_header.encode("latin-1")
        # None when nothing is trusted: then the forwarding header is not even collected.
        trusted = self.options.trusted
        self._forwarded_header = trusted.header.encode("latin-1") if trusted else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return

        id_header = self._id_header
        forwarded_header = self._forwarded_header
        request_id: str | None = None
        user_agent: str | None = None
        forwarded: list[str] = []
        for name, value in scope.get("headers") or ():
            if name == id_header:
                if request_id is None:
                    request_id = value.decode("latin-1")
            elif name == b"user-agent":
                if user_agent is None:
                    user_agent = value.decode("latin-1")
            elif name == forwarded_header:
                forwarded.append(value.decode("latin-1"))
        client = scope.get("client")
        options = self.options
        context = build_context(
            options,
            user_id=self.user_resolver(scope),
            peer=client[0] if client else None,
            forwarded=forwarded,
            request_id=request_id,
            user_agent=user_agent,
        )

        if options.echo_request_id:
            send = _echoing(send, id_header, str(context.request_id).encode("latin-1"))
        token = bind(context)
        log_tokens: Mapping[str, Token[Any]] | None = None
        try:
            if options.bind_structlog:
                log_tokens = bind_log_context(context)
            await self.app(scope, receive, send)
        finally:
            if log_tokens is not None:
                reset_log_context(log_tokens)
            reset(token)


def _echoing(send: Send, name: bytes, value: bytes) -> Send:
    # A plain function returning send's awaitable, not a coroutine function: it saves a
    # coroutine frame on every message of every response.
    def send_with_request_id(message: Message) -> Awaitable[None]:
        if message["type"] in _RESPONSE_STARTS:
            headers = message.get("headers") or ()
            for key, _ in headers:
                if key.lower() == name:
                    break
            else:
                # A new list and message: the app may reuse its own (a module-level
                # response object, say), and must not see our header pile up in it.
                message = {**message, "headers": [*headers, (name, value)]}
        return send(message)

    return send_with_request_id
