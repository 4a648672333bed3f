"""Helpers for development and tests, not for production code.

- :mod:`audit_mw.testing.embedded`: :class:`~audit_mw.testing.embedded.EmbeddedServer`, a
  throwaway PostgreSQL server (needs the ``embedded`` extra).
"""
