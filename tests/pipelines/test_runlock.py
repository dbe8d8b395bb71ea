"""The run lock: a second process is refused with a clear message; a stale lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipelines.runlock import RunLockError, lock_path, read_holder, run_lock
from pipelines.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pipelines.runlock import run_lock
    from pipelines.settings import Settings
    with run_lock(Settings(db_path=Path(sys.argv[1])), "nightly"):
        print("locked", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
    """
)


def _start_holder(db: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_process_is_refused_with_holder_named(tmp_path):
    settings = Settings(db_path=tmp_path / "tg.duckdb")
    proc = _start_holder(settings.db_path)
    try:
        with pytest.raises(RunLockError) as err, run_lock(settings, "run"):
            pass
        msg = str(err.value)
        assert f"pid {proc.pid}" in msg
        assert "`nightly`" in msg and "`run`" in msg
        assert "Wait for that command to finish" in msg
        assert str(lock_path(settings)) in msg
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "released"
        proc.wait(timeout=10)
    # After a clean release the lock is free and records nobody.
    assert read_holder(lock_path(settings)) is None
    with run_lock(settings, "run") as stale:
        assert stale is None
        assert read_holder(lock_path(settings)).pid == os.getpid()


def test_stale_lock_of_a_killed_process_is_taken_over(tmp_path):
    settings = Settings(db_path=tmp_path / "tg.duckdb")
    proc = _start_holder(settings.db_path)
    proc.send_signal(signal.SIGKILL)  # a crashed run: no clean release
    proc.wait(timeout=10)
    assert read_holder(lock_path(settings)).pid == proc.pid  # the file still names it
    with run_lock(settings, "run") as stale:
        assert stale is not None and stale.pid == proc.pid and stale.command == "nightly"
        assert read_holder(lock_path(settings)).command == "run"


def test_lock_is_reentrant_within_one_process(tmp_path):
    settings = Settings(db_path=tmp_path / "tg.duckdb")
    with run_lock(settings, "nightly"):
        with run_lock(settings, "run"):  # nightly calling detection
            assert read_holder(lock_path(settings)).command == "nightly"
        assert read_holder(lock_path(settings)).command == "nightly"
    assert read_holder(lock_path(settings)) is None


def test_in_memory_database_needs_no_lock():
    with run_lock(Settings(db_path=Path(":memory:")), "run") as stale:
        assert stale is None
