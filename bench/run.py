"""Run the benchmarks and write the results table.

    PYTHONPATH=src python -m bench.run [--quick] [--only capture,middleware,...]
                                       [--out docs/benchmarks.md] [--json PATH] [--pg N]

Each part is a module ``bench.<part>`` exposing ``run(quick: bool = False) -> list[dict]``.
Parts that do not exist yet are skipped, and said so. The results go to a JSON file
(``bench/results/latest.json`` by default) and, as markdown tables, into the file named by
``--out`` between the markers below, so that the prose around the table stays as written.
``--quick`` runs tiny sizes to prove the scripts work; it writes no markdown unless ``--out``
is given, and its JSON goes to ``bench/results/quick.json``.

``--only`` re-runs some parts and keeps the others' results from the JSON file, each with the
time it was measured at, so that one part can be re-measured without losing the rest; the
table says when each part was measured.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from audit_mw.testing.embedded import bin_dir
from bench._server import SETTINGS, binaries, machine, postgres_version, use_server

#: Every part, in the order they run and appear in the table.
PARTS = ("capture", "middleware", "pool", "pool_latency", "context_cost", "integrity", "admin")

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "bench" / "results" / "latest.json"
QUICK_JSON = ROOT / "bench" / "results" / "quick.json"
DEFAULT_MARKDOWN = ROOT / "docs" / "benchmarks.md"
BEGIN_MARKER = "<!-- benchmark results: begin (written by python -m bench.run) -->"
END_MARKER = "<!-- benchmark results: end -->"

#: Columns shown first when a part's rows have them; any other key follows, in first-seen
#: order. Lists (raw samples) stay in the JSON only.
PREFERRED_COLUMNS = ("name", "variant", "metric", "value", "unit", "baseline", "ratio",
                     "ratio_to_no_audit", "target", "target_met", "rounds")

Runner = Callable[..., list[dict[str, Any]]]


def load_part(name: str) -> Runner | None:
    """The ``run`` function of ``bench.<name>``, or None when that module does not exist."""
    module_name = f"bench.{name}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only a missing part is skipped: a part that fails to import its own dependencies
        # is a broken part, and says so.
        if exc.name == module_name:
            return None
        raise
    runner = getattr(module, "run", None)
    if not callable(runner):
        raise TypeError(f"{module_name} has no run(quick: bool = False) function")
    return runner  # type: ignore[no-any-return]


def run_parts(parts: Sequence[str], quick: bool) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Run each part; return all rows (each tagged with its part) and what happened per part."""
    rows: list[dict[str, Any]] = []
    outcome: dict[str, str] = {}
    for part in parts:
        runner = load_part(part)
        if runner is None:
            outcome[part] = "not present"
            print(f"bench: {part}: no module bench.{part} yet, skipped", file=sys.stderr)
            continue
        print(f"bench: {part}: running{' (quick)' if quick else ''}", file=sys.stderr)
        start = time.monotonic()
        part_rows = runner(quick=quick)
        outcome[part] = f"ran in {time.monotonic() - start:.0f} s, {len(part_rows)} rows"
        rows += [{"part": part, **row} for row in part_rows]
    return rows, outcome


def keep_earlier(
    json_path: Path, rows: list[dict[str, Any]], outcome: dict[str, str],
    measured: dict[str, str], *, quick: bool,
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, str]]:
    """Add the results of the parts not run now from an earlier run's JSON, in part order.

    Only results of the same kind (quick or not) are kept; a file from before per-part times
    were recorded gives its one time to each of its parts.
    """
    if not json_path.exists():
        return rows, outcome, measured
    earlier = json.loads(json_path.read_text())
    if earlier.get("quick") != quick:
        return rows, outcome, measured
    when = earlier.get("measured") or {}
    merged_rows: list[dict[str, Any]] = []
    merged_outcome: dict[str, str] = {}
    merged_measured: dict[str, str] = {}
    for part in PARTS:
        if part in outcome:
            merged_rows += [r for r in rows if r["part"] == part]
            merged_outcome[part] = outcome[part]
            merged_measured[part] = measured[part]
        elif part in earlier.get("parts", {}):
            merged_rows += [r for r in earlier.get("results", []) if r.get("part") == part]
            merged_outcome[part] = earlier["parts"][part]
            merged_measured[part] = when.get(part, earlier["environment"]["when"])
    return merged_rows, merged_outcome, merged_measured


def environment() -> dict[str, Any]:
    """The machine, the server version and the settings the database parts start with."""
    return {
        "machine": machine(),
        "postgresql": postgres_version(),
        "embedded": binaries() == bin_dir(),
        "server_settings": SETTINGS,
        "when": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    return str(value).replace("|", "\\|")


def markdown(rows: list[dict[str, Any]], env: dict[str, Any], outcome: dict[str, str],
             quick: bool, measured: dict[str, str] | None = None) -> str:
    """The results as markdown: the environment, then one table per part."""
    m = env["machine"]
    times = sorted(set((measured or {}).values()))
    when = env["when"] if len(times) <= 1 else "; ".join(
        f"{part} {at}" for part, at in (measured or {}).items())
    lines = [
        f"Measured {when} on {m['cpu']} ({m['cpus']} CPUs, {m['memory_gb']} GB), "
        f"{m['platform']}, Python {m['python']}; {env['postgresql']}"
        f"{' (embedded)' if env.get('embedded', True) else ''}.",
        "",
        "Server settings: " + ", ".join(f"`{k}={v}`" for k, v in env["server_settings"].items())
        + ".",
    ]
    if quick:
        lines += ["", "**Quick run: tiny sizes, the numbers mean nothing.**"]
    for part, what in outcome.items():
        part_rows = [r for r in rows if r["part"] == part]
        lines += ["", f"### {part}", ""]
        if not part_rows:
            lines.append(f"({what})")
            continue
        columns = _columns(part_rows)
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "|".join(" --- " for _ in columns) + "|")
        for row in part_rows:
            lines.append("| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    seen: list[str] = []
    for row in rows:
        for key, value in row.items():
            if key != "part" and key not in seen and not isinstance(value, list | dict):
                seen.append(key)
    preferred = [c for c in PREFERRED_COLUMNS if c in seen]
    return preferred + [c for c in seen if c not in preferred]


def write_markdown(path: Path, table: str) -> None:
    """Put ``table`` between the markers in ``path`` (appending them if they are missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    block = f"{BEGIN_MARKER}\n{table}{END_MARKER}"
    if BEGIN_MARKER in text and END_MARKER in text:
        head, rest = text.split(BEGIN_MARKER, 1)
        _, tail = rest.split(END_MARKER, 1)
        text = head + block + tail
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description="run the audit_mw benchmarks")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: proves the scripts work, measures nothing")
    parser.add_argument("--only", default="", metavar="PART,...",
                        help=f"run only these parts (of: {', '.join(PARTS)})")
    parser.add_argument("--out", type=Path, default=None, metavar="MARKDOWN",
                        help=f"write the tables into this file (default {DEFAULT_MARKDOWN.name} "
                             "under docs/, none with --quick)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH",
                        help="write the rows here (default bench/results/latest.json, "
                             "or quick.json with --quick)")
    parser.add_argument("--pg", type=int, default=None, metavar="MAJOR",
                        help="run the database parts on PostgreSQL MAJOR (default: the "
                             "embedded 18; see audit_mw.testing.embedded.server_bin_dir)")
    args = parser.parse_args(argv)
    if args.pg is not None:
        use_server(args.pg)

    parts = [p.strip() for p in args.only.split(",") if p.strip()] or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s): {', '.join(unknown)}; known: {', '.join(PARTS)}")

    rows, outcome = run_parts(parts, args.quick)
    env = environment()
    measured = dict.fromkeys(outcome, env["when"])
    json_path = args.json or (QUICK_JSON if args.quick else DEFAULT_JSON)
    if set(parts) != set(PARTS):
        rows, outcome, measured = keep_earlier(json_path, rows, outcome, measured,
                                               quick=args.quick)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(
        {"environment": env, "quick": args.quick, "parts": outcome, "measured": measured,
         "results": rows}, indent=2, default=str) + "\n")
    table = markdown(rows, env, outcome, args.quick, measured)
    out = args.out or (None if args.quick else DEFAULT_MARKDOWN)
    if out is not None:
        write_markdown(out, table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
