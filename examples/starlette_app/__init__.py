"""The example shop as a Starlette app: see ``app.py`` and ``README.md``."""
