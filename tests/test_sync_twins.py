"""Every sync twin is generated from its async source and current (the pool, the event
writer, the export reader): ``tools/async_to_sync.py --check``, as CI runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_sync_twins_are_current() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "async_to_sync.py"), "--check"],
                            capture_output=True, text=True, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stderr
