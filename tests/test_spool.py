"""The durable spool file: appends, torn lines, replay bookkeeping, concurrency (no database)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from audit_mw.events.spool import Spool


def test_append_creates_a_private_file_and_read_all(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "sub" / "events.jsonl")
    assert not spool.has_pending()
    spool.append('{"a":1}')
    spool.append('{"a":2}')
    assert spool.has_pending()
    assert spool.read_all() == ['{"a":1}', '{"a":2}']
    assert stat.S_IMODE(spool.path.stat().st_mode) == 0o600
    with pytest.raises(ValueError, match="line break"):
        spool.append("a\nb")


def test_replay_drops_stored_keeps_pending_and_rejects(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "events.jsonl")
    for n in range(5):
        spool.append(f'{{"n":{n}}}')
    with spool.replaying() as batch:
        assert batch is not None
        assert batch.lines == [f'{{"n":{n}}}' for n in range(5)]
        batch.stored(0)
        batch.stored(2)
        batch.rejected(4)
        spool.append('{"n":5}')  # appended while the replay runs: must be kept
        assert batch.pending == 2
    assert spool.read_all() == ['{"n":1}', '{"n":3}', '{"n":5}']
    assert spool.rejected_path.read_text() == '{"n":4}\n'
    with spool.replaying() as batch:
        assert batch is not None
        for index in range(len(batch.lines)):
            batch.stored(index)
    assert not spool.has_pending()


def test_a_torn_line_is_rejected_and_does_not_swallow_the_next(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "events.jsonl")
    spool.append('{"n":1}')
    with spool.path.open("ab") as handle:
        handle.write(b'{"n":2, "torn')  # a crash in the middle of a write
    spool.append('{"n":3}')
    assert spool.read_all() == ['{"n":1}', '{"n":2, "torn', '{"n":3}']
    with open(spool.path, "ab") as handle:
        handle.write(b'{"n":4')
    with spool.replaying() as batch:
        assert batch is not None
        assert batch.torn == ['{"n":4']
        batch.stored(0)
        batch.rejected(1)
        batch.stored(2)
    assert spool.read_all() == []
    assert spool.rejected_path.read_text().splitlines() == ['{"n":2, "torn', '{"n":4']


def test_only_one_replay_at_a_time(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "events.jsonl")
    spool.append("{}")
    with spool.replaying() as outer:
        assert outer is not None
        with spool.replaying(wait=False) as inner:
            assert inner is None


def test_concurrent_appends_from_threads_and_processes(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "events.jsonl")
    script = (
        "import sys; from audit_mw.events.spool import Spool\n"
        "s = Spool(sys.argv[1])\n"
        "for i in range(200): s.append('{\"p\":%s,\"i\":%d}' % (sys.argv[2], i))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(spool.path), str(p)], env=env)
        for p in range(2)
    ]

    def thread_appends(t: int) -> None:
        for i in range(200):
            spool.append(f'{{"t":{t},"i":{i}}}')

    threads = [threading.Thread(target=thread_appends, args=(t,)) for t in range(2)]
    for thread in threads:
        thread.start()
    # A replay that drops everything it sees, racing the appenders.
    seen: list[str] = []
    while any(t.is_alive() for t in threads) or any(p.poll() is None for p in processes):
        with spool.replaying() as batch:
            assert batch is not None
            for index in range(len(batch.lines)):
                batch.stored(index)
            seen.extend(batch.lines)
    for thread in threads:
        thread.join()
    assert all(p.wait() == 0 for p in processes)
    seen.extend(spool.read_all())
    expected = {f'{{"p":{p},"i":{i}}}' for p in range(2) for i in range(200)}
    expected |= {f'{{"t":{t},"i":{i}}}' for t in range(2) for i in range(200)}
    assert sorted(seen) == sorted(expected)  # every line once, none torn or interleaved
