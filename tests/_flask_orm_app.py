"""A small Flask + Flask-SQLAlchemy + Flask-Login app, written the usual way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from audit_mw_examples.fastapi_sqlalchemy.app import _check_password, sqlalchemy_url
from flask import Flask, abort, jsonify, request
from flask.typing import ResponseReturnValue
from flask_login import LoginManager, UserMixin, current_user, login_required, login_user
from flask_sqlalchemy import SQLAlchemy
from psycopg_pool import ConnectionPool
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from audit_mw.integrations.flask_login import init_audit, log_login_failed
from audit_mw.integrations.sqlalchemy import instrument_engine
from audit_mw.web.wsgi import WSGIAuditMiddleware


def create_app(dsn: str, *, audit: bool = True, pool_size: int = 10,
               events_pool_size: int = 4) -> tuple[Flask, Callable[[], None]]:
    """The app, and a function that closes its engine and auth-events pool."""
    class Base(DeclarativeBase):  # one per app: the tests build several
        pass

    db = SQLAlchemy(model_class=Base)

    class User(UserMixin, db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "app_users"
        id: Mapped[int] = mapped_column(primary_key=True)
        username: Mapped[str]
        password_hash: Mapped[str]
        failed_logins: Mapped[int]

    class Order(db.Model):  # type: ignore[name-defined,misc]
        __tablename__ = "app_orders"
        id: Mapped[int] = mapped_column(primary_key=True)
        note: Mapped[str]

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="test only",
        SQLALCHEMY_DATABASE_URI=sqlalchemy_url(dsn).render_as_string(hide_password=False),
        SQLALCHEMY_ENGINE_OPTIONS={"pool_size": pool_size, "max_overflow": 0,
                                   "pool_timeout": 60},
    )
    db.init_app(app)
    login_manager = LoginManager(app)
    events: ConnectionPool[Any] = ConnectionPool(dsn, min_size=1, max_size=events_pool_size,
                                                 open=True, name="auth-events")

    @login_manager.user_loader
    def load_user(user_id: str) -> Any:
        return db.session.get(User, int(user_id))

    if audit:
        with app.app_context():
            instrument_engine(db.engine)
        init_audit(login_manager, app, events=events)
    app.wsgi_app = WSGIAuditMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, trusted_proxies=["127.0.0.1/32"])

    @app.post("/login")
    def login() -> ResponseReturnValue:
        body = request.get_json()
        user = db.session.scalar(db.select(User).filter_by(username=body["username"]))
        if user is None or not _check_password(body["password"], user.password_hash):
            if user is not None:
                user.failed_logins += 1
                db.session.flush()
            if audit:
                log_login_failed(body["username"])
            db.session.rollback()
            abort(401)
        login_user(user)
        db.session.commit()
        return jsonify(user_id=user.id)

    @app.put("/orders/<int:order_id>")
    @login_required
    def update_order(order_id: int) -> ResponseReturnValue:
        order = db.session.get(Order, order_id) or abort(404)
        order.note = request.get_json()["note"]
        db.session.commit()
        return jsonify(id=order.id, user_id=current_user.id)

    def close() -> None:
        events.close()
        with app.app_context():
            db.engine.dispose()

    return app, close
