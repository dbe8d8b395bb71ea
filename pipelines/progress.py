"""Progress bars for long commands, and the summary table they end with.

On a terminal this draws a rich progress bar on stderr; elsewhere (CI, a log
file, a Prefect worker) it prints one plain line per step instead, so logs stay
readable. Output always goes to stderr, which keeps stdout clean for
``--json``.

Use::

    with steps("detect", total=len(days)) as bar:
        for day in days:
            counts = run_detection(...)
            bar.advance(f"{day}: {counts['flags']} flags")
    print_summary("nightly", {"files": 3, "flags": 12})
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Self, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

T = TypeVar("T")


def stderr_console() -> Console:
    """The console progress and summaries are drawn on (stderr)."""
    return Console(stderr=True)


def _use_bar(console: Console, enabled: bool | None) -> bool:
    if enabled is not None:
        return enabled
    if os.environ.get("TRIALGUARD_NO_PROGRESS"):
        return False
    return console.is_terminal


class Steps:
    """Handle of a running :func:`steps` block: call :meth:`advance` once per step."""

    def __init__(self, description: str, total: int | None, console: Console, bar: bool) -> None:
        self.description = description
        self.total = total
        self.done = 0
        self._console = console
        self._started = time.perf_counter()
        self._progress: Progress | None = None
        self._task = None
        if bar:
            self._progress = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[note]}"),
                console=console,
                transient=False,
            )
            self._task = self._progress.add_task(description, total=total, note="")

    def advance(self, note: str = "", n: int = 1) -> None:
        """Mark ``n`` more steps done; ``note`` says what the last one did."""
        self.done += n
        if self._progress is not None:
            self._progress.update(self._task, advance=n, note=note)
            return
        of = f"/{self.total}" if self.total is not None else ""
        elapsed = time.perf_counter() - self._started
        tail = f" {note}" if note else ""
        print(
            f"[{self.description}] {self.done}{of} ({elapsed:.1f}s){tail}",
            file=self._console.file,
            flush=True,
        )

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()


@contextlib.contextmanager
def steps(
    description: str,
    total: int | None = None,
    *,
    console: Console | None = None,
    enabled: bool | None = None,
) -> Iterator[Steps]:
    """A progress bar (terminal) or plain progress lines (anything else).

    Parameters
    ----------
    description : str
        What is being done, e.g. ``"detect"``.
    total : int or None
        Number of steps, when known.
    console : rich.console.Console or None
        Where to draw; default stderr.
    enabled : bool or None
        Force the bar on or off; default: on when stderr is a terminal and
        ``TRIALGUARD_NO_PROGRESS`` is not set.

    Examples
    --------
    >>> import io
    >>> from rich.console import Console
    >>> out = io.StringIO()
    >>> with steps("demo", total=2, console=Console(file=out), enabled=False) as s:
    ...     s.advance("first")
    ...     s.advance("second")
    >>> out.getvalue().splitlines()[1].split(" (")[0]
    '[demo] 2/2'
    """
    console = console or stderr_console()
    with Steps(description, total, console, _use_bar(console, enabled)) as handle:
        yield handle


def track(
    items: Iterable[T],
    description: str,
    *,
    total: int | None = None,
    console: Console | None = None,
    enabled: bool | None = None,
) -> Iterator[T]:
    """Iterate over ``items`` while showing progress (one step per item)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with steps(description, total, console=console, enabled=enabled) as handle:
        for item in items:
            yield item
            handle.advance(str(item))


def print_summary(
    title: str, rows: Mapping[str, object], *, console: Console | None = None
) -> None:
    """Print a two-column summary table (name, value) at the end of a command."""
    console = console or stderr_console()
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("what", style="bold")
    table.add_column("value", justify="right")
    for key, value in rows.items():
        table.add_row(str(key), f"{value:,}" if isinstance(value, int) else str(value))
    console.print(table)


def as_json_counts(obj: Any) -> Any:
    """Counts as plain JSON values (numpy/polars integers become int)."""
    if isinstance(obj, dict):
        return {str(k): as_json_counts(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_json_counts(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)
