"""The example shop as a Flask app: see ``app.py`` and ``README.md``."""
