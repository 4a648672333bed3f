"""The audit context: who is acting, from where, and under which request id.

This module owns the one ``ContextVar`` of the package and nothing else: no I/O, no
framework imports. The middlewares bind a context per request, jobs bind one with
:func:`audit_context`, and the audit-aware pools read :func:`current` before every statement
and send :meth:`AuditContext.settings` with it when they changed, where the triggers read
them.

How ``set_user`` reaches everyone in the request
------------------------------------------------

The ``ContextVar`` does not hold the :class:`AuditContext` itself but a small mutable cell
that holds it. Every copy of a ``contextvars.Context`` made during the request (the
endpoint's task, ``asyncio.create_task``, Starlette's ``run_in_threadpool``, asgiref's
``sync_to_async``) shares that one cell, so :func:`set_user` replaces the context *in the
cell* and the change is seen by the middleware, by the pool's next statement and by every
other piece of code in the same request, whichever task or thread made the call. A plain
``ContextVar.set`` in the endpoint would be lost when the copy is discarded.

Every :func:`bind` creates a new cell, so requests never share one, and nested
:func:`audit_context` blocks get their own cell: ``set_user`` inside a nested block changes
only that block, and the outer context is back when the block ends.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from functools import lru_cache
from ipaddress import IPv6Address, ip_address
from types import MappingProxyType, TracebackType
from typing import Final, TypeAlias

from audit_mw.errors import ConfigurationError

__all__ = [
    "EXTRA_KEY_MAX_LENGTH",
    "EXTRA_MAX_ITEMS",
    "EXTRA_VALUE_MAX_LENGTH",
    "REQUEST_ID_MAX_LENGTH",
    "SETTING_NAMES",
    "USER_AGENT_MAX_LENGTH",
    "USER_ID_MAX_LENGTH",
    "AuditContext",
    "ContextToken",
    "audit_context",
    "bind",
    "current",
    "is_valid_request_id",
    "reset",
    "set_user",
]

#: The PostgreSQL custom settings that carry the context to the triggers, in this order.
SETTING_NAMES: Final = (
    "audit.user_id",
    "audit.ip_address",
    "audit.request_id",
    "audit.user_agent",
    "audit.extra",
)

USER_ID_MAX_LENGTH: Final = 256
USER_AGENT_MAX_LENGTH: Final = 512
REQUEST_ID_MAX_LENGTH: Final = 128
EXTRA_MAX_ITEMS: Final = 32
EXTRA_KEY_MAX_LENGTH: Final = 64
EXTRA_VALUE_MAX_LENGTH: Final = 1024

# No quotes, spaces, commas or semicolons: a request id ends up in log lines, response
# headers and SQL settings, and must not be able to break out of any of them.
_REQUEST_ID_RE: Final = re.compile(rf"[A-Za-z0-9._:/+=@-]{{1,{REQUEST_ID_MAX_LENGTH}}}")

_NO_EXTRA: Final[Mapping[str, str]] = MappingProxyType({})


def _no_extra() -> Mapping[str, str]:
    return _NO_EXTRA


def is_valid_request_id(value: str) -> bool:
    """Whether ``value`` is an acceptable request id.

    1 to 128 characters from ``A-Z a-z 0-9 . _ : / + = @ -``. The middlewares ignore an
    incoming id that fails this test and generate their own.
    """
    return _REQUEST_ID_RE.fullmatch(value) is not None


@lru_cache(maxsize=1024)
def _normalise_ip(value: str) -> str:
    # Cached: the middleware hands the same few addresses over and over, and parsing is
    # the most expensive step of building a context.
    address = ip_address(value)
    if isinstance(address, IPv6Address):
        if address.scope_id is not None:
            raise ValueError(f"client_ip {value!r} has a zone id, which PostgreSQL rejects")
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
    return str(address)


def _check_text(name: str, value: object, limit: int) -> str:
    if type(value) is not str:
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if len(value) > limit:
        raise ValueError(f"{name} is {len(value)} characters long; the limit is {limit}")
    if "\x00" in value:
        raise ValueError(f"{name} contains a NUL character, which PostgreSQL text rejects")
    return value


def _freeze_extra(extra: Mapping[str, str]) -> Mapping[str, str]:
    if len(extra) > EXTRA_MAX_ITEMS:
        raise ValueError(f"extra has {len(extra)} items; the limit is {EXTRA_MAX_ITEMS}")
    frozen: dict[str, str] = {}
    for key in sorted(extra):
        _check_text("extra key", key, EXTRA_KEY_MAX_LENGTH)
        frozen[key] = _check_text(f"extra[{key!r}]", extra[key], EXTRA_VALUE_MAX_LENGTH)
    return MappingProxyType(frozen)


@dataclass(frozen=True, slots=True)
class AuditContext:
    """Who is acting, from where, under which request id; immutable and validated.

    ``None`` means "absent". Values are checked on construction: ``user_id`` is a non-empty
    string of at most 256 characters (a longer one raises: truncating it could attribute a
    change to someone else); ``client_ip`` must be an IP address and is normalised
    (``::ffff:10.0.0.1`` becomes ``10.0.0.1``); ``request_id`` must pass
    :func:`is_valid_request_id`; ``user_agent`` is only descriptive and client-controlled,
    so it is truncated to 512 characters instead of rejected, and an empty one becomes
    ``None``. ``extra`` holds at most 32 string pairs (keys up to 64, values up to 1024
    characters) and is stored as a read-only mapping. No value may contain NUL.

    Instances compare by value and are hashable (the hash leaves out ``extra``).
    """

    user_id: str | None = None
    client_ip: str | None = None
    request_id: str | None = None
    user_agent: str | None = None
    extra: Mapping[str, str] = field(default_factory=_no_extra, hash=False)
    # Filled on the first setting_values() call; the pools call it whenever they send a
    # context, so it is computed once per instance and never copied.
    _values: tuple[str, str, str, str, str] | None = field(
        default=None, init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        # Each check has an inline fast path for the valid case: the middlewares build
        # a context per request, and these checks are most of its cost.
        user_id = self.user_id
        if user_id is not None and (
            type(user_id) is not str
            or not user_id
            or len(user_id) > USER_ID_MAX_LENGTH
            or "\x00" in user_id
        ):
            _check_text("user_id", user_id, USER_ID_MAX_LENGTH)
        client_ip = self.client_ip
        if client_ip is not None:
            if type(client_ip) is not str:
                raise TypeError(f"client_ip must be a str or None, not {type(client_ip).__name__}")
            try:
                normalised = _normalise_ip(client_ip)
            except ValueError:
                raise ValueError(f"client_ip {client_ip!r} is not an IP address") from None
            if normalised != client_ip:
                object.__setattr__(self, "client_ip", normalised)
        request_id = self.request_id
        if request_id is not None and (
            type(request_id) is not str or _REQUEST_ID_RE.fullmatch(request_id) is None
        ):
            raise ValueError(
                f"request_id {request_id!r} is not 1-{REQUEST_ID_MAX_LENGTH}"
                " characters of A-Z a-z 0-9 . _ : / + = @ -"
            )
        user_agent = self.user_agent
        if user_agent is not None and (
            type(user_agent) is not str
            or not user_agent
            or len(user_agent) > USER_AGENT_MAX_LENGTH
            or "\x00" in user_agent
        ):
            self._cap_user_agent(user_agent)
        if self.extra is not _NO_EXTRA:
            object.__setattr__(self, "extra", _freeze_extra(self.extra))

    def _cap_user_agent(self, value: object) -> None:
        if type(value) is not str:
            raise TypeError(f"user_agent must be a str or None, not {type(value).__name__}")
        capped: str | None = value[:USER_AGENT_MAX_LENGTH].replace("\x00", "\ufffd") or None
        object.__setattr__(self, "user_agent", capped)

    def settings(self) -> dict[str, str]:
        """The PostgreSQL settings that carry this context, keyed by :data:`SETTING_NAMES`.

        Absent values are empty strings (a custom setting cannot be NULL). ``audit.extra``
        is compact JSON with sorted keys, or ``""`` when there is no extra. Each call
        returns a new dict.
        """
        return dict(zip(SETTING_NAMES, self.setting_values(), strict=True))

    def setting_values(self) -> tuple[str, str, str, str, str]:
        """The values of :meth:`settings`, in :data:`SETTING_NAMES` order.

        Computed once per instance (the tuple is immutable, so it is shared, not copied).
        """
        values = self._values
        if values is None:
            extra = self.extra
            values = (
                self.user_id or "",
                self.client_ip or "",
                self.request_id or "",
                self.user_agent or "",
                json.dumps(dict(extra), separators=(",", ":"), ensure_ascii=False)
                if extra
                else "",
            )
            # Frozen dataclass: the cache is the one attribute set after construction.
            object.__setattr__(self, "_values", values)
        return values


class _Cell:
    """The mutable holder the ContextVar points at; see the module docstring."""

    __slots__ = ("context",)

    def __init__(self, context: AuditContext) -> None:
        self.context = context


_CURRENT: Final[ContextVar[_Cell | None]] = ContextVar("audit_mw.context", default=None)
_EMPTY: Final = AuditContext()

#: What :func:`bind` returns and :func:`reset` takes; treat it as opaque.
ContextToken: TypeAlias = "Token[_Cell | None]"


class _Keep(enum.Enum):
    KEEP = enum.auto()


_KEEP: Final = _Keep.KEEP


def _derive(
    base: AuditContext,
    *,
    user_id: str | _Keep | None,
    client_ip: str | _Keep | None,
    request_id: str | _Keep | None,
    user_agent: str | _Keep | None,
    extra: Mapping[str, str] | _Keep,
) -> AuditContext:
    if (
        user_id is _KEEP
        and client_ip is _KEEP
        and request_id is _KEEP
        and user_agent is _KEEP
        and extra is _KEEP
    ):
        return base
    return AuditContext(
        user_id=base.user_id if user_id is _KEEP else user_id,
        client_ip=base.client_ip if client_ip is _KEEP else client_ip,
        request_id=base.request_id if request_id is _KEEP else request_id,
        user_agent=base.user_agent if user_agent is _KEEP else user_agent,
        # Extra is merged key by key, so a nested block can add a detail without
        # repeating the outer ones.
        extra=base.extra if extra is _KEEP else {**base.extra, **extra},
    )


def current() -> AuditContext:
    """The context bound in this request, task or thread; an empty one when none is."""
    cell = _CURRENT.get()
    return _EMPTY if cell is None else cell.context


def bind(
    context: AuditContext | None = None,
    /,
    *,
    user_id: str | _Keep | None = _KEEP,
    client_ip: str | _Keep | None = _KEEP,
    request_id: str | _Keep | None = _KEEP,
    user_agent: str | _Keep | None = _KEEP,
    extra: Mapping[str, str] | _Keep = _KEEP,
) -> ContextToken:
    """Bind a context until :func:`reset` is called with the returned token.

    Starts from ``context`` when given, otherwise from :func:`current`, and applies the
    keyword overrides (``None`` clears a field; ``extra`` is merged key by key). Always
    pair it with :func:`reset` in a ``finally`` block, in the same task or thread; prefer
    :func:`audit_context`, which does that for you.
    """
    base = current() if context is None else context
    derived = _derive(
        base,
        user_id=user_id,
        client_ip=client_ip,
        request_id=request_id,
        user_agent=user_agent,
        extra=extra,
    )
    return _CURRENT.set(_Cell(derived))


def reset(token: ContextToken) -> None:
    """Restore the context that was bound before the :func:`bind` that returned ``token``."""
    _CURRENT.reset(token)


def set_user(user_id: str | None) -> AuditContext:
    """Set the acting user for the rest of the current request or block; return the context.

    Meant for login handlers: the new user is seen by everything that runs later in the
    same request, including the middleware and the next statement on a connection checked
    out from an audit pool (or instrumented), whether the call is made from an async
    endpoint or from a sync one run in a thread pool.

    It changes the innermost bound context only (see the module docstring) and raises
    :class:`~audit_mw.errors.ConfigurationError` when no context is bound at all.
    """
    cell = _CURRENT.get()
    if cell is None:
        raise ConfigurationError(
            "set_user() needs a bound audit context: install AuditMiddleware or"
            " WSGIAuditMiddleware, or wrap the code in audit_context()"
        )
    cell.context = replace(cell.context, user_id=user_id)
    return cell.context


# Lower-case: it is used like a function, `with audit_context(...)`.
class audit_context:
    """Bind a context for the duration of a ``with`` or ``async with`` block.

    ``with audit_context(user_id="job:nightly-billing"): ...`` binds a context derived
    from the current one: fields not given are inherited from the enclosing context,
    ``None`` clears one, ``extra`` is merged. The previous context is restored on exit,
    also on exceptions. Inside an ``async def`` both forms hold across ``await``. The
    value bound on entry is returned by ``__enter__``; read :func:`current` to see later
    :func:`set_user` changes. An instance is single-use at a time.
    """

    __slots__ = ("_context", "_token")

    def __init__(
        self,
        context: AuditContext | None = None,
        /,
        *,
        user_id: str | _Keep | None = _KEEP,
        client_ip: str | _Keep | None = _KEEP,
        request_id: str | _Keep | None = _KEEP,
        user_agent: str | _Keep | None = _KEEP,
        extra: Mapping[str, str] | _Keep = _KEEP,
    ) -> None:
        # Derived at entry, not here, so that the inheritance follows where the block runs.
        self._context = (context, user_id, client_ip, request_id, user_agent, extra)
        self._token: ContextToken | None = None

    def __enter__(self) -> AuditContext:
        if self._token is not None:
            raise RuntimeError("this audit_context() is already active; create a new one")
        context, user_id, client_ip, request_id, user_agent, extra = self._context
        base = current() if context is None else context
        derived = _derive(
            base,
            user_id=user_id,
            client_ip=client_ip,
            request_id=request_id,
            user_agent=user_agent,
            extra=extra,
        )
        self._token = _CURRENT.set(_Cell(derived))
        return derived

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, self._token = self._token, None
        if token is not None:
            _CURRENT.reset(token)

    async def __aenter__(self) -> AuditContext:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
