"""Example applications for audit_mw: the same small shop in Starlette and in Flask.

Installed as the ``audit_mw_examples`` package so that ``audit-mw demo`` can run the
Starlette one. ``shop`` holds what both share: the tables, the demo users, passwords.
"""
