"""FastAPI + SQLAlchemy (async) example, audited through audit_mw.integrations."""
