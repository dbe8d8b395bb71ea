"""``trialguard review``: an analyst's decision on a flag (confirm, dismiss, snooze).

Holds the run lock while it appends to ``dispositions`` (never updating or
deleting a row there) and sets ``flags.status`` to the decision; detection keeps
that status on later runs (a dismissed episode stays dismissed, a snoozed one
reopens after ``snooze_until``, a confirmed one stays confirmed).
"""

from __future__ import annotations

import argparse
import sys
from datetime import date, datetime, timedelta
from typing import Any

import duckdb

from features.schema import (
    DECISIONS,
)
from pipelines.analyst.common import AnalystError, local_now, open_db
from pipelines.settings import Settings


def record_review(
    con: duckdb.DuckDBPyConnection,
    flag_id: str,
    decision: str,
    *,
    analyst: str,
    note: str,
    until: date | None = None,
    now: datetime,
) -> dict[str, Any]:
    """Append an analyst's decision to ``dispositions`` and set the flag's status.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The store, writable.
    flag_id : str
        The flag decided on; it must exist.
    decision : str
        ``confirmed``, ``dismissed`` or ``snoozed``.
    analyst, note : str
        Who decided and why (both required, not blank).
    until : date, optional
        Required for ``snoozed`` and only allowed for it: the flag stays quiet through
        this day and reopens the day after; it must be after the day of the decision.
    now : datetime
        When the decision is made (local wall-clock time, naive).

    Returns
    -------
    dict
        The disposition row written, plus the flag's previous status.

    Raises
    ------
    AnalystError
        Unknown flag, unknown decision, missing/extra ``until``, blank analyst or note.
    """
    if decision not in DECISIONS:
        raise AnalystError(f"decision {decision!r} is not one of {', '.join(DECISIONS)}")
    if not analyst or not analyst.strip():
        raise AnalystError("--analyst is blank; give the name of the analyst who decides")
    if not note or not note.strip():
        raise AnalystError("--note is blank; say why, so the decision can be audited later")
    if decision == "snoozed":
        if until is None:
            raise AnalystError(
                "a snoozed decision needs --until DATE (the flag stays quiet through that day)"
            )
        if until <= now.date():
            raise AnalystError(
                f"--until {until} is not after today ({now.date()}); a snooze must end in the "
                f"future, e.g. --until {now.date() + timedelta(days=7)}"
            )
    elif until is not None:
        raise AnalystError(f"--until only applies to snoozed decisions, not {decision!r}")
    found = con.execute("SELECT status FROM flags WHERE flag_id = ?", [flag_id]).fetchone()
    if found is None:
        raise AnalystError(
            f"no flag {flag_id!r}; list flag ids with `trialguard flags` (add --status all "
            "to include decided ones)"
        )
    row = {
        "flag_id": flag_id,
        "decision": decision,
        "analyst": analyst.strip(),
        "note": note.strip(),
        "decided_at": now,
        "snooze_until": until,
    }
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(
            "INSERT INTO dispositions (flag_id, decision, analyst, note, decided_at, snooze_until) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            list(row.values()),
        )
        con.execute("UPDATE flags SET status = ? WHERE flag_id = ?", [decision, flag_id])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return row | {"previous_status": found[0]}


def add_review_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard review``."""
    parser.add_argument("flag_id", help="the flag decided on")
    parser.add_argument("--decision", required=True, choices=DECISIONS)
    parser.add_argument(
        "--until", type=date.fromisoformat, help="snoozed only: stay quiet until this day"
    )
    parser.add_argument("--note", required=True, help="why (kept for audit)")
    parser.add_argument("--analyst", required=True, help="who decides")


def main_review(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard review FLAG_ID``: record a decision."""
    from pipelines.runlock import RunLockError, run_lock

    try:
        with run_lock(settings, "review"):
            con = open_db(settings, read_only=False)
            try:
                row = record_review(
                    con,
                    args.flag_id,
                    args.decision,
                    analyst=args.analyst,
                    note=args.note,
                    until=args.until,
                    now=local_now(settings),
                )
            finally:
                con.close()
    except (AnalystError, RunLockError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    until = f" until {row['snooze_until']}" if row["snooze_until"] else ""
    print(
        f"{row['flag_id']}: {row['previous_status']} -> {row['decision']}{until} "
        f"by {row['analyst']} at {row['decided_at']}"
    )
    return 0
