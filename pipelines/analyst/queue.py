"""``trialguard flags``: the review queue, filtered and ordered by score, as a table, CSV or JSON.

Reads the store read-only.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping, Sequence
from datetime import date
from pathlib import Path
from typing import Any

import duckdb

from features.schema import (
    BEHAVIOURS,
    CATEGORIES,
    FLAG_STATUSES,
    SEVERITIES,
)
from pipelines.analyst.common import (
    LATEST_DISPOSITION_SQL,
    LATEST_TERMINALS_SQL,
    AnalystError,
    _check_codes,
    _loads,
    _rows,
    _split,
    emit,
    local_now,
    open_db,
    reason_texts,
    to_csv,
    to_json,
)
from pipelines.settings import Settings

FLAG_LIST_COLUMNS: tuple[str, ...] = (
    "flag_id",
    "terminal_id",
    "merchant_id",
    "merchant_name",
    "behaviour",
    "category",
    "severity",
    "score",
    "first_seen",
    "last_seen",
    "status",
    "snooze_until",
    "reasons",
)


def query_flags(
    con: duckdb.DuckDBPyConnection,
    *,
    on: date | None = None,
    since: date | None = None,
    behaviours: Sequence[str] = (),
    categories: Sequence[str] = (),
    severities: Sequence[str] = (),
    min_severity: str | None = None,
    statuses: Sequence[str] = ("open",),
    terminals: Sequence[str] = (),
    as_of: date | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Flags matching the filters, most severe first, then by score.

    Parameters
    ----------
    con : duckdb.DuckDBPyConnection
        The store.
    on : date, optional
        Only flags whose episode covers this day (``first_seen <= on <= last_seen``).
    since : date, optional
        Only flags seen on or after this day (``last_seen >= since``).
    behaviours, categories, severities, terminals : sequence of str
        Keep flags with one of these values (empty: any).
    min_severity : str, optional
        Keep flags at this severity or above.
    statuses : sequence of str
        Keep flags with one of these statuses (empty: any). A snoozed flag stays
        quiet through ``snooze_until`` and counts as ``open`` from the day after (as
        detection reopens it).
    as_of : date, optional
        The day snoozes are judged against (default: ``on``, else no snooze ends).
    limit : int, optional
        At most this many rows.

    Returns
    -------
    list of dict
        One dictionary per flag with :data:`FLAG_LIST_COLUMNS` plus
        ``reasons_list`` (parsed reasons) and ``evidence`` (ids).
    """
    _check_codes("behaviour", list(behaviours), tuple(BEHAVIOURS))
    _check_codes("category", list(categories), CATEGORIES)
    _check_codes(
        "severity", list(severities) + ([min_severity] if min_severity else []), SEVERITIES
    )
    _check_codes("status", list(statuses), FLAG_STATUSES)
    as_of = as_of or on
    rank = (
        "CASE severity "
        + " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(SEVERITIES))
        + " END"
    )
    where, params = ["TRUE"], []
    if on is not None:
        where.append("first_seen <= ? AND last_seen >= ?")
        params += [on, on]
    if since is not None:
        where.append("last_seen >= ?")
        params.append(since)
    for column, values in (
        ("behaviour", behaviours),
        ("category", categories),
        ("severity", severities),
        ("terminal_id", terminals),
        ("status", statuses),
    ):
        if values:
            where.append(f"{column} IN ({', '.join('?' for _ in values)})")
            params += list(values)
    if min_severity:
        where.append("severity_rank >= ?")
        params.append(SEVERITIES.index(min_severity))
    sql = f"""
        WITH reg AS ({LATEST_TERMINALS_SQL}),
             last_d AS ({LATEST_DISPOSITION_SQL}),
             listed AS (
                SELECT f.flag_id, f.terminal_id, f.merchant_id, reg.merchant_name, f.behaviour,
                       f.category, f.severity, f.score, f.first_seen, f.last_seen,
                       CASE WHEN f.status = 'snoozed' AND d.snooze_until IS NOT NULL
                                 AND CAST(? AS DATE) IS NOT NULL
                                 AND d.snooze_until < CAST(? AS DATE)
                            THEN 'open' ELSE f.status END AS status,
                       CASE WHEN f.status = 'snoozed' THEN d.snooze_until END AS snooze_until,
                       CAST(f.reasons AS VARCHAR) AS reasons_json,
                       CAST(f.evidence AS VARCHAR) AS evidence_json,
                       {rank.replace("severity", "f.severity", 1)} AS severity_rank
                FROM flags f
                LEFT JOIN reg ON reg.terminal_id = f.terminal_id
                LEFT JOIN last_d d ON d.flag_id = f.flag_id
             )
        SELECT * FROM listed
        WHERE {" AND ".join(where)}
        ORDER BY severity_rank DESC, score DESC, last_seen DESC, flag_id
        {"LIMIT " + str(int(limit)) if limit else ""}
    """
    rows = _rows(con, sql, [as_of, as_of, as_of, as_of, *params])
    out = []
    for r in rows:
        reasons = _loads(r.pop("reasons_json"), [])
        r.pop("severity_rank")
        r["reasons_list"] = reasons
        r["reasons"] = reason_texts(reasons)
        r["evidence"] = _loads(r.pop("evidence_json"), [])
        out.append(r)
    return out


def format_flags_table(rows: Sequence[Mapping[str, Any]], title: str = "Flags") -> str:
    """Flags as a rich table rendered to text."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{title} ({len(rows)})", show_lines=False)
    for name in (
        "flag",
        "terminal",
        "merchant",
        "behaviour",
        "severity",
        "score",
        "seen",
        "status",
        "why",
    ):
        table.add_column(name, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["flag_id"]),
            str(r["terminal_id"]),
            str(r.get("merchant_name") or ""),
            f"{r['behaviour']} ({r['category']})",
            str(r["severity"]),
            f"{r['score']:.2f}",
            f"{r['first_seen']} .. {r['last_seen']}",
            str(r["status"]) + (f" until {r['snooze_until']}" if r.get("snooze_until") else ""),
            "; ".join(r["reasons"]),
        )
    console = Console(file=io.StringIO(), width=200, markup=False, highlight=False)
    console.print(table)
    return console.file.getvalue()


def add_flags_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``trialguard flags``."""
    parser.add_argument(
        "--date", type=date.fromisoformat, help="flags whose episode covers this day"
    )
    parser.add_argument("--since", type=date.fromisoformat, help="flags seen on or after this day")
    parser.add_argument("--behaviour", action="append", help="behaviour code(s), comma separated")
    parser.add_argument("--category", action="append", help="category(ies), comma separated")
    parser.add_argument("--severity", action="append", help="severity(ies), comma separated")
    parser.add_argument("--min-severity", choices=SEVERITIES, help="this severity or above")
    parser.add_argument(
        "--status",
        action="append",
        help="status(es), comma separated, or 'all' (default: open)",
    )
    parser.add_argument("--terminal", action="append", help="terminal id(s), comma separated")
    parser.add_argument("--limit", type=int, help="at most this many flags")
    parser.add_argument("--format", choices=("table", "csv", "json"), default="table")
    parser.add_argument("--out", type=Path, help="write to this file instead of stdout")


def main_flags(args: argparse.Namespace, settings: Settings) -> int:
    """``trialguard flags``: list flags as a table, CSV or JSON."""
    statuses = _split(args.status) or ["open"]
    if "all" in statuses:
        statuses = []
    try:
        con = open_db(settings)
        try:
            rows = query_flags(
                con,
                on=args.date,
                since=args.since,
                behaviours=_split(args.behaviour),
                categories=_split(args.category),
                severities=_split(args.severity),
                min_severity=args.min_severity,
                statuses=statuses,
                terminals=_split(args.terminal),
                as_of=args.date or local_now(settings).date(),
                limit=args.limit,
            )
        finally:
            con.close()
    except (AnalystError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.format == "csv":
        emit(to_csv(rows, FLAG_LIST_COLUMNS), args.out, bom=args.out is not None)
    elif args.format == "json":
        emit(
            to_json(
                [
                    {c: r.get(c) for c in (*FLAG_LIST_COLUMNS, "evidence")}
                    | {"reasons": r["reasons_list"]}
                    for r in rows
                ]
            ),
            args.out,
        )
    else:
        emit(format_flags_table(rows), args.out)
    return 0
