"""Loads the package's SQL from ``audit_mw/sql``.

The database side of ``audit_mw`` lives in ``.sql`` files so that a DBA can read all of it
without reading Python:

- ``sql/migrations/NNNN_name.sql``: the schema, as numbered migrations applied in order;
- ``sql/*.sql``: named statements, each introduced by a ``-- name: NAME`` line.

Named statements may hold ``{placeholders}`` for identifiers and literals; callers fill them
with :mod:`psycopg.sql` objects (``Identifier``, ``Literal``), never with string formatting.
Values are always bind parameters.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources

from psycopg import sql

__all__ = ["Migration", "migrations", "query", "statement"]

_NAME_LINE = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_MIGRATION_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_ACCEPTS_LINE = re.compile(r"^-- accepts-applied: ([0-9a-f]{64})\s*$", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema migration."""

    version: int
    name: str
    text: str

    @property
    def checksum(self) -> str:
        """SHA-256 of the file, to detect a released migration edited in place."""
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def accepted_checksums(self) -> frozenset[str]:
        """The checksums an install may have recorded for this migration.

        Its own, and those of the earlier texts of a released migration that had to be
        edited: each named in the file by a ``-- accepts-applied: <sha256>`` line, with a later
        migration that brings such installs to the same schema (see docs/operations.md,
        "PostgreSQL versions").
        """
        return frozenset({self.checksum, *_ACCEPTS_LINE.findall(self.text)})


def _read(path: str) -> str:
    return resources.files("audit_mw").joinpath("sql", f"{path}.sql").read_text(encoding="utf-8")


@functools.cache
def migrations() -> tuple[Migration, ...]:
    """Every migration shipped with the package, in version order."""
    folder = resources.files("audit_mw").joinpath("sql", "migrations")
    found = []
    for entry in folder.iterdir():
        match = _MIGRATION_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"audit_mw migrations are not numbered 1..n: {versions}")
    return tuple(found)


@functools.cache
def _named(file: str) -> dict[str, str]:
    text = _read(file)
    parts = _NAME_LINE.split(text)
    # parts: [preamble, name1, body1, name2, body2, ...]
    return {name: _without_leading_comments(body)
            for name, body in zip(parts[1::2], parts[2::2], strict=True)}


def _without_leading_comments(body: str) -> str:
    """The statement without the comment lines that introduce it: written for the reader of
    the file, they need not travel to the server with every execution."""
    lines = body.strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip()


def statement(file: str, name: str) -> str:
    """The named statement ``name`` from ``sql/<file>.sql``, as text."""
    try:
        return _named(file)[name]
    except KeyError:
        raise KeyError(f"no statement named {name!r} in sql/{file}") from None


def query(file: str, name: str) -> sql.SQL:
    """The named statement as a :class:`psycopg.sql.SQL`, ready for ``.format()`` or execute.

    The text comes from the package's own files, never from input.
    """
    return sql.SQL(statement(file, name))
