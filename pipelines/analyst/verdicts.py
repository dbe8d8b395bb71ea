"""``trialguard verdicts --date D``: trial-end recommendations with the evidence behind them.

Which terminals are judged: those whose trial ends in the window
``D - ended_days <= trial_end <= D + within_days`` (defaults: ended today or
ends within the next 7 days), by their latest registry version as of ``D``; or
exactly the terminals named with ``--terminal``. Activity counts the trial
window up to ``D``; flags count as of ``D`` (a snoozed flag whose snooze has
ended is open again). The rules themselves are in :mod:`models.verdict`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import date, timedelta
from pathlib import Path

import duckdb

from models.verdict import FlagFact, TerminalFacts, Verdict, recommend
from pipelines.analyst.common import (
    LATEST_TERMINALS_SQL,
    AnalystError,
    _rows,
    _split,
    emit,
    open_db,
    to_csv,
    to_json,
)
from pipelines.analyst.queue import query_flags
from pipelines.settings import Settings

VERDICT_COLUMNS: tuple[str, ...] = (
    "terminal_id",
    "merchant_name",
    "trial_end",
    "verdict",
    "rationale",
    "flag_ids",
    "evidence",
)


def terminal_facts(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    *,
    within_days: int = 7,
    ended_days: int = 0,
    terminals: Sequence[str] = (),
) -> list[tuple[TerminalFacts, dict]]:
    """The facts a verdict needs, for the terminals whose trial ends around ``as_of``.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The store.
    as_of : date
        The day of judgement: registry, activity and flags as of this day.
    within_days, ended_days : int
        Judge trials ending up to ``within_days`` after and ``ended_days`` before ``as_of``.
    terminals : sequence of str
        Judge exactly these terminals instead (window ignored).

    Returns
    -------
    list of (TerminalFacts, dict)
        Facts, and the registry row they came from, ordered by trial end then terminal.
    """
    if within_days < 0 or ended_days < 0:
        raise AnalystError(
            f"--within {within_days} / --ended {ended_days}: both must be 0 or more days"
        )
    if terminals:
        placeholders = ", ".join("?" for _ in terminals)
        pick, params = f"reg.terminal_id IN ({placeholders})", list(terminals)
    else:
        pick = "reg.trial_end BETWEEN ? AND ?"
        params = [as_of - timedelta(days=ended_days), as_of + timedelta(days=within_days)]
    reg = _rows(
        con,
        f"""
        WITH reg AS ({LATEST_TERMINALS_SQL})
        SELECT reg.terminal_id, reg.merchant_id, reg.merchant_name, reg.status,
               reg.trial_start, reg.trial_end, reg.policy_id,
               count(DISTINCT t.local_date) AS active_days,
               count(t.txn_id) AS txn_count,
               coalesce(sum(t.amount_minor) FILTER (WHERE t.response_code = '00'), 0)
                   AS approved_amount_minor,
               count(t.txn_id) FILTER (WHERE t.response_code <> '00') AS declined_count
        FROM reg
        LEFT JOIN transactions t
               ON t.terminal_id = reg.terminal_id
              AND t.local_date BETWEEN reg.trial_start AND least(reg.trial_end, CAST(? AS DATE))
        WHERE {pick}
        GROUP BY ALL
        ORDER BY reg.trial_end, reg.terminal_id
        """,
        [as_of, as_of, as_of, *params],
    )
    missing = sorted(set(terminals) - {r["terminal_id"] for r in reg})
    if missing:
        raise AnalystError(
            f"terminal(s) {', '.join(missing)} not in the registry as of {as_of}; "
            "a verdict needs a registered trial (check the id and --date)"
        )
    ids = [r["terminal_id"] for r in reg]
    by_terminal: dict[str, list[FlagFact]] = {tid: [] for tid in ids}
    if ids:
        for f in query_flags(con, terminals=ids, statuses=(), as_of=as_of):
            if f["first_seen"] > as_of:
                continue  # detected after the day of judgement
            by_terminal[f["terminal_id"]].append(
                FlagFact(
                    flag_id=f["flag_id"],
                    behaviour=f["behaviour"],
                    category=f["category"],
                    severity=f["severity"],
                    status=f["status"],
                    score=float(f["score"]),
                    first_seen=f["first_seen"],
                    last_seen=f["last_seen"],
                    reasons=tuple(f["reasons"]),
                )
            )
    return [
        (
            TerminalFacts(
                terminal_id=r["terminal_id"],
                trial_end=r["trial_end"],
                registry_status=r["status"],
                active_days=int(r["active_days"]),
                txn_count=int(r["txn_count"]),
                approved_amount_minor=int(r["approved_amount_minor"]),
                declined_count=int(r["declined_count"]),
                flags=tuple(by_terminal[r["terminal_id"]]),
            ),
            r,
        )
        for r in reg
    ]


def compute_verdicts(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    *,
    within_days: int = 7,
    ended_days: int = 0,
    terminals: Sequence[str] = (),
    min_active_days: int = 5,
) -> list[dict]:
    """Verdicts for the terminals whose trial ends around ``as_of`` (see the module doc).

    Returns
    -------
    list of dict
        :meth:`models.verdict.Verdict.as_dict` plus ``merchant_name`` and ``days_left``
        (days from ``as_of`` to the trial end; negative once it has ended).
    """
    out = []
    for facts, reg in terminal_facts(
        con, as_of, within_days=within_days, ended_days=ended_days, terminals=terminals
    ):
        verdict: Verdict = recommend(facts, min_active_days=min_active_days)
        out.append(
            verdict.as_dict()
            | {
                "merchant_name": reg["merchant_name"],
                "days_left": (facts.trial_end - as_of).days,
            }
        )
    return out


def format_verdicts_table(rows: Sequence[dict], as_of: date) -> str:
    """Verdicts as a rich table rendered to text."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Trial-end verdicts as of {as_of} ({len(rows)})", show_lines=True)
    for name in ("terminal", "merchant", "trial end", "verdict", "rationale", "evidence"):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(
            r["terminal_id"],
            str(r["merchant_name"] or ""),
            f"{r['trial_end']} ({r['days_left']:+d} d)",
            r["verdict"].upper(),
            r["rationale"],
            "\n".join(r["evidence"]) or "-",
        )
    console = Console(file=io.StringIO(), width=200, markup=False, highlight=False)
    console.print(table)
    return console.file.getvalue()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard verdicts``."""
    parser.add_argument("--date", type=date.fromisoformat, required=True, help="day of judgement")
    parser.add_argument(
        "--within", type=int, default=7, help="trials ending up to this many days after --date"
    )
    parser.add_argument(
        "--ended", type=int, default=0, help="also trials that ended up to this many days before"
    )
    parser.add_argument(
        "--terminal", action="append", help="judge these terminals (comma separated)"
    )
    parser.add_argument(
        "--min-active-days", type=int, default=5, help="fewer active days than this: extend"
    )
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")


def main(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard verdicts``: pass, extend or terminate for trials ending around a date."""
    try:
        con = open_db(settings)
        try:
            rows = compute_verdicts(
                con,
                args.date,
                within_days=args.within,
                ended_days=args.ended,
                terminals=_split(args.terminal),
                min_active_days=args.min_active_days,
            )
        finally:
            con.close()
    except (AnalystError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        emit(to_csv(rows, VERDICT_COLUMNS), args.out, bom=args.out is not None)
    elif args.format == "json":
        emit(to_json(rows), args.out)
    else:
        emit(format_verdicts_table(rows, args.date), args.out)
    return 0
