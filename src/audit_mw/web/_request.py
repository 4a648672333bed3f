"""Options and per-request rules shared by the ASGI and WSGI middlewares.

Pure: it turns what a server reports about a request (peer, a few header values, the
resolved user) into an :class:`~audit_mw.context.AuditContext`, so that both middlewares
apply exactly the same rules and only differ in how they read a request.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from contextvars import Token
from dataclasses import dataclass
from typing import Any, Final

from structlog.contextvars import bind_contextvars, reset_contextvars

from audit_mw.context import USER_AGENT_MAX_LENGTH, AuditContext, is_valid_request_id
from audit_mw.errors import ConfigurationError
from audit_mw.web.proxy import TrustedProxies

#: The user recorded for a request that no one is logged in to.
ANONYMOUS: Final = "anonymous"

_HEADER_NAME_RE: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def new_request_id() -> str:
    """A fresh request id: 32 random hex characters (128 bits), like a uuid4 hex."""
    # os.urandom directly: same entropy as uuid4() at a third of its cost per request.
    return os.urandom(16).hex()


@dataclass(frozen=True, slots=True)
class Options:
    """The validated configuration of a middleware; built once, read per request."""

    trusted: TrustedProxies
    request_id_header: str  # lower-case
    trust_request_id: bool
    generate_request_id: Callable[[], str]
    echo_request_id: bool
    user_agent_max: int
    bind_structlog: bool


def make_options(
    *,
    trusted_proxies: Iterable[str] | str | TrustedProxies,
    forwarded_header: str,
    request_id_header: str,
    trust_request_id: bool,
    generate_request_id: Callable[[], str],
    echo_request_id: bool,
    user_agent_max: int,
    bind_structlog: bool,
) -> Options:
    """Validate the keyword options both middlewares take; raise ConfigurationError."""
    if isinstance(trusted_proxies, TrustedProxies):
        if trusted_proxies.header != forwarded_header.lower():
            raise ConfigurationError(
                f"forwarded_header {forwarded_header!r} disagrees with the TrustedProxies"
                f" header {trusted_proxies.header!r}; set it in one place"
            )
        trusted = trusted_proxies
    else:
        trusted = TrustedProxies(trusted_proxies, header=forwarded_header)
    if not isinstance(request_id_header, str) or not _HEADER_NAME_RE.fullmatch(request_id_header):
        raise ConfigurationError(f"request_id_header {request_id_header!r} is not a header name")
    if not callable(generate_request_id):
        raise ConfigurationError("generate_request_id must be a callable returning a str")
    if type(user_agent_max) is not int or not 0 <= user_agent_max <= USER_AGENT_MAX_LENGTH:
        raise ConfigurationError(
            f"user_agent_max must be an int from 0 to {USER_AGENT_MAX_LENGTH},"
            f" not {user_agent_max!r}"
        )
    return Options(
        trusted=trusted,
        request_id_header=request_id_header.lower(),
        trust_request_id=bool(trust_request_id),
        generate_request_id=generate_request_id,
        echo_request_id=bool(echo_request_id),
        user_agent_max=user_agent_max,
        bind_structlog=bool(bind_structlog),
    )


def choose_request_id(options: Options, incoming: str | None) -> str:
    """The incoming id when trusted and well-formed, else a newly generated one."""
    if incoming is not None and options.trust_request_id and is_valid_request_id(incoming):
        return incoming
    generated = options.generate_request_id()
    if options.generate_request_id is new_request_id:
        return generated  # always well-formed; skip the check on the hot path
    if not isinstance(generated, str) or not is_valid_request_id(generated):
        raise ConfigurationError(
            f"generate_request_id returned {generated!r}, which is not a valid request id"
        )
    return generated


def build_context(
    options: Options,
    *,
    user_id: str | None,
    peer: str | None,
    forwarded: list[str],
    request_id: str | None,
    user_agent: str | None,
) -> AuditContext:
    """The request's context; ``forwarded`` holds the values of ``options.trusted.header``.

    A ``None`` user is recorded as :data:`ANONYMOUS`: an HTTP request always has an
    actor, and ``None`` is kept for work outside any request.
    """
    client_ip = options.trusted.resolve(peer, forwarded)
    limit = options.user_agent_max
    return AuditContext(
        user_id=user_id or ANONYMOUS,
        client_ip=client_ip,
        request_id=choose_request_id(options, request_id),
        user_agent=user_agent[:limit] if user_agent and limit else None,
    )


def bind_log_context(context: AuditContext) -> Mapping[str, Token[Any]]:
    """Bind the request's id, user and IP into structlog's contextvars; return the tokens."""
    return bind_contextvars(
        request_id=context.request_id,
        user_id=context.user_id,
        client_ip=context.client_ip,
    )


def reset_log_context(tokens: Mapping[str, Token[Any]]) -> None:
    """Undo :func:`bind_log_context`, restoring whatever was bound before."""
    reset_contextvars(**tokens)
