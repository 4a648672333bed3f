"""The async event writer is the sync one with async/await: keep the twins in step."""

from __future__ import annotations

import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "audit_mw"


def normalised(name: str) -> str:
    text = (SRC / name).read_text()
    text = text.split('"""', 2)[2]  # the module docstrings differ on purpose
    text = re.sub(r"\b(async|await) ", "", text)
    for async_name, sync_name in (("AsyncConnectionPool", "ConnectionPool"),
                                  ("AsyncConnection", "Connection"),
                                  ("AsyncDatabase", "Database")):
        text = text.replace(async_name, sync_name)
    text = re.sub(r"\s+", " ", text)
    return re.sub(r"([(\[]) | ([)\]])", r"\1\2", text)  # line wrapping may differ


def test_async_writer_is_the_twin_of_the_sync_one() -> None:
    assert normalised("events/_async.py") == normalised("events/_sync.py")
