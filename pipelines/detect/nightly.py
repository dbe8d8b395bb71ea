"""Run bookkeeping of the nightly run and the nights it must detect.

The ``runs`` row of a nightly run (``start_run`` / ``finish_run``, which close
out crashed runs), the last successful detection, the first night with trial
data and :func:`dates_to_detect` (missed nights backfilled in order, up to
``max_backfill_days``), and one night's detection (:func:`detect_day`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pipelines.progress import as_json_counts
from pipelines.settings import Settings
from pipelines.version import code_version

MAX_BACKFILL_DAYS = 31
#: Commands whose successful runs count as "detection done for as_of".
DETECTION_COMMANDS = ("nightly", "run")


def config_version_of(config_path: str | Path | None) -> str:
    """sha256 of the merged detection config (``models/thresholds.toml`` + candidate)."""
    from models.config import config_version, load_config

    return config_version(load_config(config_path))


def policy_version_of(con) -> str:
    """Version of the policies in force (as detection records it), ``"none"`` if none loaded."""
    from pipelines.detect.store import load_policies, policy_version

    policies = load_policies(con)
    return policy_version(policies) if policies else "none"


def last_detected_date(con) -> date | None:
    """``as_of`` of the latest successful detection run (``nightly`` or ``run``)."""
    marks = ", ".join(f"'{c}'" for c in DETECTION_COMMANDS)
    row = con.execute(
        f"SELECT max(as_of) FROM runs WHERE status = 'succeeded' AND command IN ({marks})"
    ).fetchone()
    return row[0] if row else None


def first_trial_date(con) -> date | None:
    """The first night with transactions since the earliest trial start (``None`` if none).

    Bounded by the registry's ``trial_start`` because a terminal with a skewed
    clock can report transactions dated 1970 or 2000 (detected as malfunction).
    """
    row = con.execute(
        "SELECT min(local_date) FROM transactions "
        "WHERE local_date >= (SELECT min(trial_start) FROM terminals)"
    ).fetchone()
    return row[0] if row else None


def dates_to_detect(
    last_success: date | None,
    as_of: date,
    max_backfill_days: int = MAX_BACKFILL_DAYS,
    first_data: date | None = None,
) -> list[date]:
    """The nights to detect, in order, so that no night since the last success is skipped.

    With no successful detection yet, the nights from ``first_data`` (the first
    night with trial data) are the missed ones.

    Examples
    --------
    >>> dates_to_detect(date(2026, 3, 11), date(2026, 3, 14))
    [datetime.date(2026, 3, 12), datetime.date(2026, 3, 13), datetime.date(2026, 3, 14)]
    >>> dates_to_detect(None, date(2026, 3, 14), first_data=date(2026, 3, 13))
    [datetime.date(2026, 3, 13), datetime.date(2026, 3, 14)]
    >>> dates_to_detect(None, date(2026, 3, 14))
    [datetime.date(2026, 3, 14)]
    >>> dates_to_detect(date(2026, 3, 20), date(2026, 3, 14))  # a rerun
    [datetime.date(2026, 3, 14)]
    """
    if last_success is None and first_data is not None and first_data < as_of:
        last_success = first_data - timedelta(days=1)
    if last_success is None or last_success >= as_of:
        return [as_of]
    gap = (as_of - last_success).days
    if gap > max_backfill_days:
        first = last_success + timedelta(days=1)
        raise ValueError(
            f"{gap} nights from {first} to {as_of} have not been detected; the nightly "
            f"run detects at most {max_backfill_days} (--max-backfill-days). Close the gap "
            f"first with `trialguard run --from {first} --to {as_of - timedelta(days=1)}`, "
            "then rerun the nightly"
        )
    return [last_success + timedelta(days=i) for i in range(1, gap + 1)]


def detect_day(
    settings: Settings,
    day: date,
    config: dict | None,
    run_id: str,
    runner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Detect one night and persist its flags; return the detection counts.

    ``runner``: ``task_runner``, ``dask_address``, ``spill_dir`` of
    :func:`pipelines.detect.run.run_detection` (default the local runner).
    """
    from pipelines.detect.run import run_detection

    result = run_detection(settings, day, config=config, run_id=run_id, **(runner or {}))
    return as_json_counts(dict(getattr(result, "counts", {}) or {}))


def start_run(
    settings: Settings,
    run_id: str,
    command: str,
    as_of: date | None,
    *,
    config_path: str | Path | None = None,
) -> datetime:
    """Record a ``running`` row in ``runs`` (and close out crashed runs of ``command``).

    Must be called while holding the run lock: any other ``running`` row of the
    same command then belongs to a process that died.
    """
    from pipelines.storage import connect

    started = datetime.now(ZoneInfo(settings.timezone)).replace(tzinfo=None)
    con = connect(settings.db_path)
    try:
        con.execute(
            "UPDATE runs SET status = 'failed', message = 'crashed: the process ended "
            "before the run finished (found by run ' || ? || ')' "
            "WHERE status = 'running' AND command = ?",
            [run_id, command],
        )
        con.execute(
            "INSERT INTO runs (run_id, command, as_of, started_at, status, code_version, "
            "config_version) VALUES (?, ?, ?, ?, 'running', ?, ?)",
            [run_id, command, as_of, started, code_version(), config_version_of(config_path)],
        )
    finally:
        con.close()
    return started


def finish_run(
    settings: Settings,
    run_id: str,
    *,
    status: str,
    inputs: Iterable[dict] | None,
    row_counts: dict[str, Any],
    message: str = "",
    duration_s: float,
) -> None:
    """Close the ``runs`` row: outcome, inputs, row counts, policy version, duration."""
    from pipelines.storage import connect

    finished = datetime.now(ZoneInfo(settings.timezone)).replace(tzinfo=None)
    con = connect(settings.db_path)
    try:
        con.execute(
            "UPDATE runs SET finished_at = ?, status = ?, inputs = ?, policy_version = ?, "
            "row_counts = ?, duration_s = ?, message = ? WHERE run_id = ?",
            [
                finished,
                status,
                json.dumps(list(inputs or []), default=str),
                policy_version_of(con),
                json.dumps(as_json_counts(row_counts), default=str),
                round(duration_s, 3),
                message[:2000],
                run_id,
            ],
        )
    finally:
        con.close()


def default_as_of(settings: Settings, now: datetime | None = None) -> date:
    """Yesterday in the data's time zone: the night a scheduled run covers.

    ``now`` is the run's scheduled start (so a late-starting run still covers
    the right night); default the current time.

    Examples
    --------
    >>> from datetime import timezone
    >>> default_as_of(Settings(), datetime(2026, 3, 14, 18, 30, tzinfo=timezone.utc))
    datetime.date(2026, 3, 14)
    """
    zone = ZoneInfo(settings.timezone)
    now = now.astimezone(zone) if now is not None else datetime.now(zone)
    return now.date() - timedelta(days=1)


# ---------------------------------------------------------------------------
# Prefect tasks: thin, they log what the plain functions return
