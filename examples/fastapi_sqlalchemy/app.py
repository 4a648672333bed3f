"""A small FastAPI app on SQLAlchemy's async engine, audited end to end.

The app is written the usual way: a bearer token is looked up and the user loaded through
the request's ``AsyncSession`` in a dependency, which then calls ``set_user``. audit_mw adds:

- ``AuditMiddleware``: the request's client IP (trusted proxies), request id, user agent;
- ``instrument_engine(engine)``: every statement of the engine carries the current context,
  so the writes made after the dependency loaded the user are attributed to that user;
- a separate small pool for auth events, so that a failed login is stored although the
  request's transaction rolls back, and an event never waits for the ORM's pool.

``create_app(url, audit=False)`` leaves ``instrument_engine`` out: the glue a user would
write without the integration (the tests use it as the negative control).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations,
# some of which are local to create_app().

import hashlib
import hmac
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, HTTPException
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool
from pydantic import BaseModel
from sqlalchemy import URL, ForeignKey, String, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from audit_mw.context import set_user
from audit_mw.events import alog_auth_event
from audit_mw.integrations.sqlalchemy import instrument_engine
from audit_mw.web.asgi import AuditMiddleware

SCHEMA = """
CREATE TABLE app_users (
    id serial PRIMARY KEY,
    username text UNIQUE NOT NULL,
    password_hash text NOT NULL,
    failed_logins integer NOT NULL DEFAULT 0
);
CREATE TABLE app_tokens (
    token text PRIMARY KEY,
    user_id integer NOT NULL REFERENCES app_users (id)
);
CREATE TABLE app_orders (
    id serial PRIMARY KEY,
    note text NOT NULL DEFAULT ''
);
"""


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "app_users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String, unique=True)
    password_hash: Mapped[str]
    failed_logins: Mapped[int] = mapped_column(default=0)


class Token(Base):
    __tablename__ = "app_tokens"
    token: Mapped[str] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("app_users.id"))


class Order(Base):
    __tablename__ = "app_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    note: Mapped[str] = mapped_column(default="")


def hash_password(password: str, salt: str = "") -> str:
    """``salt$hex``: a salted SHA-256, cheap on purpose (an example; use argon2 or bcrypt)."""
    salt = salt or secrets.token_hex(8)
    return f"{salt}${hashlib.sha256((salt + password).encode()).hexdigest()}"


def _check_password(password: str, stored: str) -> bool:
    salt, _, _ = stored.partition("$")
    return hmac.compare_digest(hash_password(password, salt), stored)


class Credentials(BaseModel):
    username: str
    password: str


class Note(BaseModel):
    note: str


def sqlalchemy_url(dsn: str) -> URL:
    """A libpq connection string or URL, as a SQLAlchemy URL for the psycopg driver."""
    params = conninfo_to_dict(dsn)
    host = str(params.pop("host", "") or "") or None
    query = {k: str(v) for k, v in params.items()
             if k not in ("user", "password", "port", "dbname")}
    if host and host.startswith("/"):  # a Unix socket folder goes in the query
        query["host"], host = host, None
    port = params.get("port")
    return URL.create("postgresql+psycopg", username=_opt(params.get("user")),
                      password=_opt(params.get("password")), host=host,
                      port=int(str(port)) if port else None,
                      database=_opt(params.get("dbname")), query=query)


def _opt(value: object) -> str | None:
    return None if value is None else str(value)


def create_app(
    database_url: str, *, trusted_proxies: list[str] | tuple[str, ...] = (),
    pool_size: int = 10, events_pool_size: int = 4, audit: bool = True,
) -> FastAPI:
    """The app on ``database_url`` (a libpq URL); tables from :data:`SCHEMA`."""
    engine = create_async_engine(sqlalchemy_url(database_url), pool_size=pool_size,
                                 max_overflow=0, pool_timeout=60)
    if audit:
        instrument_engine(engine)
    # Auth events: own pool, own transactions; never a connection of the ORM's pool.
    events = AsyncConnectionPool(database_url, min_size=1, max_size=events_pool_size,
                                 open=False, name="auth-events")
    sessions = async_sessionmaker(engine, expire_on_commit=False)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await events.open()
        try:
            yield
        finally:
            await events.close()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(AuditMiddleware, trusted_proxies=list(trusted_proxies))

    async def db() -> AsyncIterator[AsyncSession]:
        async with sessions() as session:
            yield session

    Session = Annotated[AsyncSession, Depends(db)]

    async def current_user(session: Session,
                           authorization: Annotated[str, Header()] = "") -> User:
        # The usual order: decode the token, load the user through the request's session.
        token = authorization.removeprefix("Bearer ").strip()
        user = await session.scalar(
            select(User).join(Token, Token.user_id == User.id).where(Token.token == token))
        if user is None:
            raise HTTPException(401, "not logged in")
        set_user(str(user.id))
        return user

    CurrentUser = Annotated[User, Depends(current_user)]

    @app.post("/login")
    async def login(body: Credentials, session: Session) -> dict[str, Any]:
        user = await session.scalar(select(User).where(User.username == body.username))
        if user is None or not _check_password(body.password, user.password_hash):
            if user is not None:
                user.failed_logins += 1
                await session.flush()
            # Stored on its own connection: survives the rollback below.
            await alog_auth_event(events, "login_failed", user_id=body.username,
                                  reason="bad_credentials")
            await session.rollback()
            raise HTTPException(401, "bad credentials")
        set_user(str(user.id))
        token = secrets.token_urlsafe(24)
        session.add(Token(token=token, user_id=user.id))
        await session.commit()
        await alog_auth_event(events, "login", user_id=str(user.id))
        return {"token": token, "user_id": user.id}

    @app.put("/orders/{order_id}")
    async def update_order(order_id: int, body: Note, user: CurrentUser,
                           session: Session) -> dict[str, Any]:
        order = await session.get(Order, order_id)
        if order is None:
            raise HTTPException(404, "no such order")
        order.note = body.note
        await session.commit()
        return {"id": order.id, "note": order.note, "user_id": user.id}

    return app


def app_from_env() -> FastAPI:
    """For ``uvicorn --factory``: ``DATABASE_URL``, ``TRUSTED_PROXIES``, ``AUDIT_INTEGRATION``."""
    proxies = [p for p in os.environ.get("TRUSTED_PROXIES", "").split(",") if p]
    return create_app(os.environ["DATABASE_URL"], trusted_proxies=proxies,
                      audit=os.environ.get("AUDIT_INTEGRATION", "1") != "0")
