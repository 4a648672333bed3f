"""Generate the sync twin of each async module (``pool/async_.py`` -> ``pool/sync.py``, ...).

Where a sync function mirrors an async one, the async file is the source and the sync one
is generated: never edited by hand. The pairs are listed in ``FILES``. The conversion is a
fixed list of whole-word substitutions (``await``, ``async with``, ``AsyncCursor`` ...),
followed by ruff's import sorting. Usage::

    python tools/async_to_sync.py          # rewrite the sync twins
    python tools/async_to_sync.py --check  # exit 1 if a twin is not current (CI)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: (async source, sync target, module docstring of the target)
FILES = [
    (
        "src/audit_mw/pool/async_.py",
        "src/audit_mw/pool/sync.py",
        "The threaded audit-aware pool, :class:`AuditPool`, and :func:`apply_context`.",
    ),
    (
        "src/audit_mw/events/_async.py",
        "src/audit_mw/events/_sync.py",
        "The synchronous event writer: moves records to the database, the spool and the log.",
    ),
    (
        "src/audit_mw/admin/_export_async.py",
        "src/audit_mw/admin/_export_sync.py",
        "Reading one export from the database: the synchronous shell of ``write_export``.",
    ),
]

# Order matters: longer names before the names they contain.
WORDS = [
    ("aapply_context", "apply_context"),
    ("AsyncAuditPool", "AuditPool"),
    ("AsyncAuditClientCursor", "AuditClientCursor"),
    ("AsyncAuditCursor", "AuditCursor"),
    ("AsyncClientCursor", "ClientCursor"),
    ("AsyncConnectionPool", "ConnectionPool"),
    ("AsyncDatabase", "Database"),
    ("AsyncConninfoParam", "ConninfoParam"),
    ("AsyncConnection", "Connection"),
    ("AsyncCursor", "Cursor"),
    ("AsyncCopy", "Copy"),
    ("AsyncWriter", "Writer"),
    ("AsyncIterator", "Iterator"),
    ("asynccontextmanager", "contextmanager"),
    ("ACT", "CT"),
]
PHRASES = [
    (re.compile(r"\bAsyncGenerator\[(.+?), None\]"), r"Generator[\1, None, None]"),
    (re.compile(r"\bAsyncGenerator\b"), "Generator"),
    (re.compile(r"\bawait "), ""),
    (re.compile(r"\basync (def|with|for) "), r"\1 "),
    (re.compile(r"\basyncio\b"), "threaded"),
    (re.compile(r"borrowing task"), "borrowing thread"),
    # `async for x in it: yield x` has no shorter async form; the sync one does.
    (re.compile(r"for (\w+) in (.+):\n\s+yield \1\n"), r"yield from \2\n"),
]
DOCSTRING = re.compile(r'\A"""(.*?)"""\n', re.DOTALL)


def convert(text: str, source: str, target: str, docstring: str) -> str:
    """The sync module ``target`` generated from ``text``, the async module ``source``."""
    text = DOCSTRING.sub("", text, count=1)
    for old, new in WORDS:
        text = re.sub(rf"\b{old}\b", new, text)
    for pattern, replacement in PHRASES:
        text = pattern.sub(replacement, text)
    header = (
        f'"""{docstring}\n\n'
        f"Generated from ``{Path(source).parent.name}/{Path(source).name}`` by"
        " ``tools/async_to_sync.py``: do not edit;\nchange the async source and regenerate.\n"
        '"""\n'
    )
    return _sort_imports(header + text, target)


def _sort_imports(text: str, target: str) -> str:
    # Renaming can unsort an import list (AsyncIterator, Iterable -> Iterator, Iterable).
    result = subprocess.run(  # noqa: S603 - this interpreter's ruff, on our own text
        [sys.executable, "-m", "ruff", "check", "--select", "I", "--fix-only", "--quiet",
         "--stdin-filename", str(ROOT / target), "-"],
        input=text, capture_output=True, text=True, check=True, cwd=ROOT,
    )
    return result.stdout


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if a twin is not current")
    args = parser.parse_args(argv)
    stale = []
    for source, target, docstring in FILES:
        expected = convert((ROOT / source).read_text(encoding="utf-8"), source, target, docstring)
        path = ROOT / target
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == expected:
            continue
        if args.check:
            stale.append(target)
        else:
            path.write_text(expected, encoding="utf-8")
            print(f"wrote {target}")
    if stale:
        print(
            f"not generated from their async source: {', '.join(stale)};"
            " run python tools/async_to_sync.py",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
