"""The documentation matches the code: CLI and API references are complete, names exist,
and the quick starts' applications run as printed against a real database."""

from __future__ import annotations

import argparse
import ast
import asyncio
import atexit
import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import psycopg
import pytest

import audit_mw
from audit_mw.capture.tracking import track
from audit_mw.cli import build_parser
from audit_mw.context import SETTING_NAMES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _page(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def _section(text: str, heading: str) -> str:
    """The text under ``heading`` up to the next heading of the same or a higher level."""
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    rest = text[start + len(heading) + 1:]
    stop = re.search(rf"^#{{1,{level}}} ", rest, flags=re.MULTILINE)
    return rest[: stop.start()] if stop else rest


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("audit-mw has no sub-commands")


def _squash(text: str) -> str:
    return " ".join(text.split())


# --- CLI reference -----------------------------------------------------------------------


def test_every_cli_command_and_option_is_in_the_cli_reference() -> None:
    page = _page("reference-cli.md")
    commands = _subparsers(build_parser())
    assert commands, "no sub-commands found"
    for name, sub in commands.items():
        heading = f"### `audit-mw {name}`"
        assert heading + "\n" in page, f"{name} is missing from docs/reference-cli.md"
        section = _section(page, heading)
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            for option in action.option_strings:
                assert f"`{option}" in section, f"audit-mw {name}: {option} is not described"
            for choice in action.choices or ():
                assert f"`{choice}`" in section, f"audit-mw {name}: {choice} is not described"


def test_cli_reference_usage_lines_match_the_parser() -> None:
    page = _page("reference-cli.md")
    parser = build_parser()
    assert _squash(parser.format_usage()) in _squash(page)
    for name, sub in _subparsers(parser).items():
        section = _section(page, f"### `audit-mw {name}`")
        assert _squash(sub.format_usage()) in _squash(section), (
            f"the usage line of audit-mw {name} in docs/reference-cli.md is out of date")


def test_global_options_are_in_the_cli_reference() -> None:
    page = _page("reference-cli.md")
    for action in build_parser()._actions:
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        for option in action.option_strings:
            assert f"`{option}" in page, f"global option {option} is not described"


def test_cli_reference_documents_only_real_commands() -> None:
    documented = set(re.findall(r"^### `audit-mw ([a-z-]+)`", _page("reference-cli.md"),
                                flags=re.MULTILINE))
    assert documented == set(_subparsers(build_parser()))


def test_commands_named_in_the_docs_exist() -> None:
    commands = set(_subparsers(build_parser()))
    pattern = re.compile(r"audit-mw +(?:--dsn +\S+ +)?([a-z][a-z-]*)")
    seen = set()
    for page in sorted(DOCS.glob("*.md")):
        for match in pattern.finditer(page.read_text(encoding="utf-8")):
            seen.add(match.group(1))
            assert match.group(1) in commands, (
                f"{page.name} mentions `audit-mw {match.group(1)}`, which does not exist")
    assert {"install", "track", "status", "seal", "verify"} <= seen


# --- API reference -----------------------------------------------------------------------


def test_every_public_name_is_in_the_api_reference() -> None:
    page = _page("reference-api.md")
    missing = [name for name in audit_mw.__all__ if f"### `{name}`\n" not in page]
    assert not missing, f"not in docs/reference-api.md: {', '.join(missing)}"


def test_api_reference_documents_only_public_names() -> None:
    # Each section names its module; each entry in it is a public name of that module.
    page = _page("reference-api.md")
    sections = re.findall(r"^## [^\n]*: `(audit_mw[\w.]*)`\n(.*?)(?=^## |\Z)", page,
                          flags=re.MULTILINE | re.DOTALL)
    assert len(sections) >= 8
    documented = 0
    for module_name, body in sections:
        module = importlib.import_module(module_name)
        for name in re.findall(r"^### `([A-Za-z_]+)`$", body, flags=re.MULTILINE):
            assert name in module.__all__, f"{name} is not exported by {module_name}"
            documented += 1
    assert documented == len(re.findall(r"^### `", page, flags=re.MULTILINE))


def test_what_moved_where_names_imports_that_work() -> None:
    table = _section(_page("reference-api.md"), "## What moved where")
    rows = re.findall(r"^\| (.*) \| (.*) \|$", table, flags=re.MULTILINE)[2:]
    assert len(rows) >= 10
    for _, now in rows:
        for statement in re.findall(r"`(from audit_mw[\w.]* import [\w, ]+)`", now):
            exec(statement, {})  # noqa: S102 - the documented import, as a user types it
        for module_name in re.findall(r"`(audit_mw(?:\.\w+)+)`", now):
            importlib.import_module(module_name)
    for name in audit_mw.__all__:
        assert f"`{name}`" in _section(_page("reference-api.md"), "# Python API reference")


def test_every_environment_variable_the_code_reads_is_documented() -> None:
    section = _section(_page("reference-api.md"), "## Environment variables")
    names = set()
    for path in (ROOT / "src" / "audit_mw").rglob("*.py"):
        if path.parent.name == "django":
            continue  # the Django integration reads settings.AUDIT_MW, not the environment
        names |= set(re.findall(r"\"(AUDIT_[A-Z_]+|DATABASE_URL)\"", path.read_text()))
    assert {"DATABASE_URL", "AUDIT_HMAC_KEY", "AUDIT_MW_HOME"} <= names
    for name in sorted(names):
        assert f"`{name}`" in section, f"environment variable {name} is not documented"


def test_every_audit_setting_is_documented() -> None:
    section = _section(_page("reference-api.md"), "## PostgreSQL settings: `audit.*`")
    for name in SETTING_NAMES:
        assert f"`{name}`" in section


# --- the site ----------------------------------------------------------------------------


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    nav = re.findall(r"^ +- (?:\"[^\"]*\": )?([\w-]+\.md)$",
                     _section_of_yaml(config, "nav"), flags=re.MULTILINE)
    assert nav[0] == "index.md"
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))


def _section_of_yaml(text: str, key: str) -> str:
    """The block of a top-level key of a YAML file (up to the next top-level key)."""
    match = re.search(rf"^{key}:\n((?:[ \t].*\n|\n)*)", text, flags=re.MULTILINE)
    assert match is not None, f"no {key} in mkdocs.yml"
    return match.group(1)


def _python_blocks(text: str) -> Iterator[str]:
    yield from re.findall(r"^```python\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)


def _imports(block: str) -> Iterator[tuple[str, str | None]]:
    try:
        tree = ast.parse(block)
    except SyntaxError:  # a fragment: check the import lines alone
        lines = [line for line in block.splitlines()
                 if re.match(r"(from|import) audit_mw", line) and "(" not in line]
        tree = ast.parse("\n".join(lines))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("audit_mw"):
            for alias in node.names:
                yield node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("audit_mw"):
                    yield alias.name, None


def test_every_audit_mw_import_in_the_docs_resolves() -> None:
    checked = 0
    for page in sorted(DOCS.glob("*.md")):
        for block in _python_blocks(page.read_text(encoding="utf-8")):
            for module_name, name in _imports(block):
                module = importlib.import_module(module_name)
                if name is not None:
                    assert hasattr(module, name), (
                        f"{page.name}: `from {module_name} import {name}` fails")
                checked += 1
    assert checked > 20


# --- the quick starts run as printed -------------------------------------------------------


def _quickstart_app(page: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    **env: str) -> ModuleType:
    """Import the `# app.py` block of a quick start as a module, with ``env`` set."""
    blocks = [b for b in _python_blocks(_page(page)) if b.startswith("# app.py\n")]
    assert len(blocks) == 1, f"{page} should have exactly one `# app.py` block"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    name = f"quickstart_{page.removesuffix('.md').replace('-', '_')}"
    path = tmp_path / f"{name}.py"
    path.write_text(blocks[0])
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def shop(dsn: str, app_dsn: str, conn: psycopg.Connection[Any]) -> dict[str, str]:
    """The quick starts' tables, tracked, writable by the test's application role; returns
    the environment the quick-start apps read (the admin routes run as the superuser)."""
    conn.execute("CREATE TABLE users (id bigserial PRIMARY KEY, email text,"
                 " password_hash text, ssn text)")
    conn.execute("CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint,"
                 " total numeric, status text)")
    conn.execute("GRANT SELECT, INSERT, UPDATE, DELETE ON users, orders TO audit_mw_test_app")
    conn.execute("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO audit_mw_test_app")
    track(conn, "users", exclude=["password_hash"], mask=["ssn"])
    track(conn, "orders")
    conn.execute("INSERT INTO orders (user_id, total, status) VALUES (1, 9.50, 'new')")
    return {"APP_DSN": app_dsn, "ADMIN_DSN": dsn, "SESSION_SECRET": "test-session-secret",
            "AUDIT_HMAC_KEY": "test:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"}


def _app_events(conn: psycopg.Connection[Any], first_id: int) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT kind, action, app_user_id, table_name, resource_id, success, request_id"
        " FROM audit.events WHERE id > %s ORDER BY id", [first_id]).fetchall()


def _last_id(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT coalesce(max(id), 0) FROM audit.events").fetchone()
    assert row is not None
    return int(row[0])


@pytest.mark.db
def test_the_asgi_quickstart_app_runs_as_printed(
    conn: psycopg.Connection[Any], shop: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _quickstart_app("quickstart-asgi.md", tmp_path, monkeypatch, **shop)
    start = _last_id(conn)
    app = module.app

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 5000))
            async with httpx.AsyncClient(transport=transport, base_url="http://shop") as c:
                bad = await c.post("/login", json={"username": "mallory", "password": "x"})
                seen["bad"] = bad.status_code
                seen["anonymous_audit"] = (await c.get("/audit/events")).status_code
                assert (await c.post("/login", json={"username": "bob",
                                                     "password": "builder"})).status_code == 200
                paid = await c.post("/orders/1/pay")
                seen["paid"] = (paid.status_code, paid.headers["x-request-id"])
                seen["bob_audit"] = (await c.get("/audit/events")).status_code
                assert (await c.post("/logout")).status_code == 200
                assert (await c.post("/login", json={"username": "alice",
                                                     "password": "wonderland"})).status_code == 200
                seen["history"] = (await c.get("/audit/records/orders/1")).json()
        return seen

    seen = asyncio.run(scenario())
    assert seen["bad"] == 401
    assert seen["anonymous_audit"] == 403
    assert seen["bob_audit"] == 403
    status_code, request_id = seen["paid"]
    assert status_code == 200
    assert [(h["action"], h["app_user_id"]) for h in seen["history"]["history"]] == [
        ("INSERT", None), ("UPDATE", "bob")]
    assert seen["history"]["history"][1]["changes"] == {"status": {"old": "new", "new": "paid"}}

    rows = _app_events(conn, start)
    assert rows == [
        ("auth", "login_failed", "anonymous", None, "mallory", False, rows[0][6]),
        ("admin", "audit_access_denied", "anonymous", None, None, False, rows[1][6]),
        ("auth", "login", "bob", None, "bob", True, rows[2][6]),
        ("data", "UPDATE", "bob", "orders", None, None, request_id),
        ("admin", "audit_access_denied", "bob", None, None, False, rows[4][6]),
        ("auth", "logout", "bob", None, "bob", True, rows[5][6]),
        ("auth", "login", "alice", None, "alice", True, rows[6][6]),
        ("admin", "audit_queried", "alice", None, None, True, rows[7][6]),
    ]
    ips = conn.execute("SELECT DISTINCT host(client_ip) FROM audit.events WHERE id > %s",
                       [start]).fetchall()
    assert ips == [("203.0.113.7",)]


@pytest.mark.db
def test_the_wsgi_quickstart_app_runs_as_printed(
    conn: psycopg.Connection[Any], shop: dict[str, str], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module = _quickstart_app("quickstart-wsgi.md", tmp_path, monkeypatch, **shop)
    atexit.unregister(module.shutdown)
    start = _last_id(conn)
    try:
        client = module.app.test_client()
        env = {"REMOTE_ADDR": "203.0.113.8"}
        bad = client.post("/login", json={"username": "mallory", "password": "x"},
                          environ_base=env)
        assert bad.status_code == 401
        assert client.post("/login", json={"username": "bob", "password": "builder"},
                           environ_base=env).status_code == 200
        paid = client.post("/orders/1/pay", environ_base=env)
        assert paid.status_code == 200
        assert client.get("/audit/events", environ_base=env).status_code == 403
        assert client.post("/logout", environ_base=env).status_code == 200
        assert client.post("/login", json={"username": "alice", "password": "wonderland"},
                           environ_base=env).status_code == 200
        listing = client.get("/audit/events", query_string={"limit": 3}, environ_base=env)
        assert listing.status_code == 200
        assert len(listing.json["events"]) == 3
    finally:
        module.shutdown()

    rows = _app_events(conn, start)
    assert rows == [
        ("auth", "login_failed", "anonymous", None, "mallory", False, rows[0][6]),
        ("auth", "login", "bob", None, "bob", True, rows[1][6]),
        ("data", "UPDATE", "bob", "orders", None, None, paid.headers["x-request-id"]),
        ("admin", "audit_access_denied", "bob", None, None, False, rows[3][6]),
        ("auth", "logout", "bob", None, "bob", True, rows[4][6]),
        ("auth", "login", "alice", None, "alice", True, rows[5][6]),
        ("admin", "audit_queried", "alice", None, None, True, rows[6][6]),
    ]
    ips = conn.execute("SELECT DISTINCT host(client_ip) FROM audit.events WHERE id > %s",
                       [start]).fetchall()
    assert ips == [("203.0.113.8",)]


def test_the_readme_architecture_matches_the_tree() -> None:
    section = _section((ROOT / "README.md").read_text(encoding="utf-8"), "## Architecture")
    listed = set(re.findall(r"^\| `audit_mw\.(\w+)` \|", section, flags=re.MULTILINE))
    src = ROOT / "src" / "audit_mw"
    packages = {p.parent.name for p in src.glob("*/__init__.py")}
    assert listed == packages
    top = {p.name for p in src.glob("*.py")} - {"__init__.py", "__main__.py"}
    top_row = re.search(r"^\| `audit_mw` \|(.*)$", section, flags=re.MULTILINE)
    assert top_row is not None
    assert set(re.findall(r"`(\w+\.py)`", top_row.group(1))) == top
    for folder in ("sql", *packages):
        assert f"{folder}/" in section, f"the diagram does not show {folder}/"
