"""Integrations with the ORMs and frameworks apps write through.

Each submodule imports its framework, which is an optional extra of the package; the core
never imports this package.

- :mod:`audit_mw.integrations.sqlalchemy`: ``instrument_engine(engine)`` for a sync or async
  SQLAlchemy engine (FastAPI, Flask-SQLAlchemy, plain SQLAlchemy);
- :mod:`audit_mw.integrations.django`: a Django app and a middleware, set in ``settings.py``;
- :mod:`audit_mw.integrations.flask_login`: Flask-Login's user and signals;
- :mod:`audit_mw.integrations.alembic`: ``track``/``untrack``/``retrack`` from a migration.

See ``docs/integrations.md``.
"""
