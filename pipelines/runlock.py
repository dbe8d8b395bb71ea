"""One writer at a time: an exclusive lock beside the database file.

Every command that writes to the store (``nightly``, ``run``, ``ingest``, the
copy step of ``backtest``) holds :func:`run_lock` while it works. A second
command on the same database refuses at once with a message that names the
holder (pid, command, since when) and says what to do.

The lock is an exclusive ``fcntl.flock`` on ``<db>.lock``; the file holds JSON
describing the holder. The kernel drops a ``flock`` when its process dies, so a
lock file left behind by a crashed run is *stale*: the next command takes it
over and says so. Inside one process the lock is re-entrant, so a flow that
holds it can call functions that take it again (``nightly`` calling ingest and
detection).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pipelines.settings import Settings


class RunLockError(RuntimeError):
    """Another command holds the database's run lock."""


@dataclass(frozen=True)
class LockHolder:
    """Who holds (or last held) a run lock."""

    pid: int
    command: str
    since: str
    host: str = ""

    def describe(self) -> str:
        """One line naming the holder, for messages."""
        where = f" on {self.host}" if self.host else ""
        return f"`{self.command}` (pid {self.pid}{where}, since {self.since})"


@dataclass
class _Held:
    fd: int
    depth: int
    holder: LockHolder


_HELD: dict[Path, _Held] = {}
_HELD_GUARD = threading.RLock()


def lock_path(settings: Settings) -> Path | None:
    """The lock file of ``settings.db_path`` (``None`` for an in-memory database)."""
    if str(settings.db_path) == ":memory:":
        return None
    db = Path(settings.db_path).resolve()
    return db.with_name(db.name + ".lock")


def read_holder(path: Path) -> LockHolder | None:
    """The holder recorded in a lock file, or ``None`` when empty or unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
        return LockHolder(
            pid=int(data["pid"]),
            command=str(data.get("command", "?")),
            since=str(data.get("since", "?")),
            host=str(data.get("host", "")),
        )
    except (OSError, ValueError, TypeError, KeyError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refusal(path: Path, holder: LockHolder | None, command: str) -> str:
    if holder is None:
        who = "another command (the lock file does not say which)"
    else:
        who = holder.describe()
    msg = (
        f"cannot start `{command}`: the database is locked by {who}; lock file {path}. "
        "Wait for that command to finish and try again"
    )
    if (
        holder is not None
        and holder.host in ("", socket.gethostname())
        and not _pid_alive(holder.pid)
    ):
        msg += (
            f". Process {holder.pid} no longer exists, so the lock is stale: delete {path} "
            "and retry"
        )
    else:
        msg += f" (or, only if pid {holder.pid if holder else '?'} is gone, delete {path})"
    return msg + "."


@contextlib.contextmanager
def run_lock(
    settings: Settings, command: str, *, wait_s: float = 0.0, poll_s: float = 0.2
) -> Iterator[LockHolder | None]:
    """Hold the database's run lock for the duration of a ``with`` block.

    Parameters
    ----------
    settings : Settings
        Names the database; the lock file is ``<db>.lock`` beside it.
    command : str
        What is running (``"nightly"``, ``"run"``, ``"ingest"``...), shown to
        anyone who is refused.
    wait_s : float
        How long to keep trying before refusing (0: refuse at once).
    poll_s : float
        Pause between attempts while waiting.

    Yields
    ------
    LockHolder or None
        The previous holder when a stale lock (its process gone) was taken
        over, else ``None``.

    Raises
    ------
    RunLockError
        Another process holds the lock; the message names it and says what to do.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> s = Settings(db_path=pathlib.Path(tempfile.mkdtemp()) / "t.duckdb")
    >>> with run_lock(s, "run") as stale:
    ...     stale is None
    True
    """
    path = lock_path(settings)
    if path is None:
        yield None
        return
    with _HELD_GUARD:
        held = _HELD.get(path)
        if held is not None:  # re-entrant inside one process
            held.depth += 1
    if held is not None:
        try:
            yield None
        finally:
            with _HELD_GUARD:
                held.depth -= 1
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + max(wait_s, 0.0)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunLockError(_refusal(path, read_holder(path), command)) from None
                time.sleep(poll_s)
    except BaseException:
        os.close(fd)
        raise
    # We hold the flock; whatever the file says is a stale record of a dead holder.
    previous = read_holder(path)
    me = LockHolder(
        pid=os.getpid(),
        command=command,
        since=datetime.now().astimezone().isoformat(timespec="seconds"),
        host=socket.gethostname(),
    )
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me.__dict__).encode(), 0)
    os.fsync(fd)
    with _HELD_GUARD:
        _HELD[path] = _Held(fd=fd, depth=1, holder=me)
    try:
        yield previous
    finally:
        with _HELD_GUARD:
            _HELD.pop(path, None)
        try:
            os.ftruncate(fd, 0)  # an empty lock file means "free"
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
