"""The Django middleware: the request's audit context, with ``request.user`` read lazily.

Place it after ``AuthenticationMiddleware``. Works under WSGI and ASGI, with sync and async
views: the context is bound around the rest of the chain, and Django's ``sync_to_async``
copies it into the threads where the ORM runs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from contextvars import Token
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from audit_mw.context import AuditContext, bind, reset
from audit_mw.integrations._apply import defer_user, undefer_user
from audit_mw.integrations.django.settings import audit_settings
from audit_mw.web._request import bind_log_context, build_context, reset_log_context

__all__ = ["DjangoAuditMiddleware"]


def _user_id(request: HttpRequest) -> str | None:
    user = getattr(request, "user", None)
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.pk)


class DjangoAuditMiddleware:
    """Bind the request's audit context; the user is resolved before the first statement.

    Configured by ``settings.AUDIT_MW`` (trusted proxies, headers, ...). The client IP
    follows the same rules as :class:`audit_mw.web.asgi.AuditMiddleware`: the socket peer
    (``REMOTE_ADDR``) unless it is a trusted proxy, then the forwarding header read right to
    left. A request with no authenticated user is attributed ``anonymous``.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.settings = audit_settings()
        options = self.settings.options
        self._id_key = "HTTP_" + options.request_id_header.upper().replace("-", "_")
        header = options.trusted.header
        self._forwarded_key = ("HTTP_" + header.upper().replace("-", "_")
                               if options.trusted else None)
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def _context(self, request: HttpRequest) -> AuditContext:
        meta = request.META
        forwarded = meta.get(self._forwarded_key) if self._forwarded_key else None
        return build_context(
            self.settings.options,
            user_id=None,  # anonymous until the user is resolved
            peer=meta.get("REMOTE_ADDR") or None,
            forwarded=[forwarded] if forwarded else [],
            request_id=meta.get(self._id_key),
            user_agent=meta.get("HTTP_USER_AGENT"),
        )

    def _enter(self, request: HttpRequest
               ) -> tuple[Token[Any], Token[Any], Mapping[str, Token[Any]] | None, str]:
        context = self._context(request)
        token = bind(context)
        pending = defer_user(lambda: _user_id(request))
        log_tokens = bind_log_context(context) if self.settings.options.bind_structlog else None
        return token, pending, log_tokens, str(context.request_id)

    def _exit(self, tokens: tuple[Token[Any], Token[Any], Mapping[str, Token[Any]] | None, str],
              response: HttpResponseBase | None) -> None:
        token, pending, log_tokens, request_id = tokens
        if log_tokens is not None:
            reset_log_context(log_tokens)
        undefer_user(pending)
        reset(token)
        options = self.settings.options
        if response is not None and options.echo_request_id and not response.has_header(
                options.request_id_header):
            response[options.request_id_header] = request_id

    def __call__(self, request: HttpRequest) -> Any:
        """Handle one request (sync), or return the coroutine (async)."""
        if self._async:
            return self.__acall__(request)
        tokens = self._enter(request)
        response = None
        try:
            response = self.get_response(request)
            return response
        finally:
            self._exit(tokens, response)

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        """Handle one request under ASGI."""
        tokens = self._enter(request)
        response = None
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        try:
            response = await get_response(request)
            return response
        finally:
            self._exit(tokens, response)
