"""``trialguard evaluate``: precision and recall per behaviour against a truth file.

The truth file is the simulator's ``truth.csv`` (``terminal_id, behaviour, start,
end``). Flags come from the store; the metrics are ``models.evaluation``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from features.schema import BEHAVIOURS
from models.evaluation import evaluate
from pipelines.settings import Settings
from pipelines.storage import connect

TRUTH_COLUMNS = ("terminal_id", "behaviour")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``trialguard evaluate``."""
    parser.add_argument("--truth", required=True, type=Path, help="truth.csv from the simulator")
    parser.add_argument(
        "--from", dest="date_from", type=date.fromisoformat, help="only flags seen on or after"
    )
    parser.add_argument(
        "--to", dest="date_to", type=date.fromisoformat, help="only flags seen on or before"
    )
    parser.add_argument(
        "--k",
        type=int,
        nargs="*",
        default=[50, 100],
        help="Precision@k cut-offs besides the number of truth terminals (default 50 100)",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")


def read_truth(path: Path) -> pl.DataFrame:
    """The truth file as ``terminal_id, behaviour`` (all columns read as text)."""
    if not path.is_file():
        raise FileNotFoundError(
            f"truth file {path} does not exist; pass the truth.csv written by "
            "`trialguard simulate --out DIR` (DIR/truth.csv)"
        )
    truth = pl.read_csv(path, infer_schema=False)
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise ValueError(
            f"truth file {path} has columns {truth.columns}; it needs {list(TRUTH_COLUMNS)} "
            "(as written by `trialguard simulate`)"
        )
    unknown = sorted(set(truth.get_column("behaviour").drop_nulls()) - set(BEHAVIOURS))
    if unknown:
        raise ValueError(
            f"truth file {path} names unknown behaviours {unknown}; known codes are "
            f"{sorted(BEHAVIOURS)}"
        )
    truth = truth.select(*TRUTH_COLUMNS, *(["start"] if "start" in truth.columns else []))
    if "start" in truth.columns:  # days to the first flag are measured from it
        try:
            truth = truth.with_columns(pl.col("start").str.to_date("%Y-%m-%d"))
        except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
            raise ValueError(
                f"truth file {path}: column start holds a value that is not a date "
                f"YYYY-MM-DD ({exc}); fix it or drop the column"
            ) from None
    return truth.drop_nulls(TRUTH_COLUMNS)


def _frame(con, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())


def read_label_coverage(con, date_to: date | None = None) -> dict[str, Any]:
    """How many fraud reports the runs had seen: the labels behind the leakage detectors.

    Fraud reports arrive weeks after the compromise (domain.md §2.1 step 6), and a run
    on day D uses only those reported by the end of D. ``last_run`` is the latest date
    of a succeeded ``trialguard run`` (no later than ``date_to``); ``after`` counts the
    stored reports that arrived after it, ``last_reported`` is the newest report's day.
    """
    first_run, last_run = con.execute(
        """
        SELECT min(as_of), max(as_of) FROM runs
        WHERE command = 'run' AND status = 'succeeded' AND (?::DATE IS NULL OR as_of <= ?::DATE)
        """,
        [date_to, date_to],
    ).fetchone()
    total, after, last_reported = con.execute(
        """
        SELECT count(*),
               count(*) FILTER (WHERE ?::DATE IS NULL OR reported_at >= ?::DATE + 1),
               max(reported_at)::DATE
        FROM fraud_reports
        """,
        [last_run, last_run],
    ).fetchone()
    return {
        "to": date_to,
        "first_run": first_run,
        "last_run": last_run,
        "reports": int(total),
        "after": int(after),
        "last_reported": last_reported,
    }


def read_store(
    settings: Settings, date_from: date | None = None, date_to: date | None = None
) -> tuple[pl.DataFrame, list[str], pl.DataFrame, dict[str, Any]]:
    """Flags (restricted to the date range), all terminal ids, dispositions and label coverage."""
    con = connect(settings.db_path, read_only=True)
    try:
        flags = _frame(
            con,
            """
            SELECT flag_id, terminal_id, behaviour, score, first_seen, last_seen
            FROM flags
            WHERE (?::DATE IS NULL OR last_seen >= ?::DATE)
              AND (?::DATE IS NULL OR first_seen <= ?::DATE)
            """,
            [date_from, date_from, date_to, date_to],
        )
        terminals = _frame(
            con,
            "SELECT terminal_id FROM terminals UNION SELECT terminal_id FROM transactions",
        )["terminal_id"].to_list()
        dispositions = _frame(con, "SELECT flag_id, decision, decided_at FROM dispositions")
        labels = read_label_coverage(con, date_to)
    finally:
        con.close()
    if date_from is not None or date_to is not None:
        dispositions = dispositions.filter(pl.col("flag_id").is_in(flags["flag_id"].implode()))
    return flags, terminals, dispositions, labels


def label_note(labels: dict[str, Any]) -> str:
    """One paragraph on the labels the leakage detectors had (see :func:`read_label_coverage`)."""
    if labels["reports"] == 0:
        return "labels: the store holds no fraud reports (card_compromise and fraud_hotspot need them)"
    if labels["last_run"] is None:
        upto = "" if labels.get("to") is None else f" on or before {labels['to']}"
        return f"labels: no succeeded `trialguard run`{upto} is recorded in the store"
    last, after, total = labels["last_run"], labels["after"], labels["reports"]
    if after == 0:
        return (
            f"labels: all {total:,} fraud reports in the store were known by the last run ({last})"
        )
    end = labels["last_reported"]
    return (
        f"labels: {after:,} of {total:,} fraud reports ({100 * after / total:.1f}%) arrived after "
        f"the last run ({last}), up to {end}; card_compromise and fraud_hotspot have not seen "
        f"them, so their recall is measured on incomplete labels. To measure with every label, "
        f"keep the nightly run going: trialguard run --from {last + timedelta(days=1)} --to {end}"
    )


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _days(row: dict[str, Any]) -> str:
    """Median (max) days from the injected start to the first flag, ``-`` when none."""
    if row.get("days_median") is None:
        return "-"
    return f"{row['days_median']:g} ({row['days_max']})"


def print_report(result: dict[str, Any], console=None) -> None:
    """The metrics as readable tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Terminal-level quality per behaviour")
    timed = any("days_median" in r for r in result["behaviours"])
    cols = ["behaviour", "truth", "flagged", "TP", "FP", "FN", "precision", "recall", "F1"]
    for col in cols + (["days to flag"] if timed else []):
        table.add_column(col, justify="left" if col == "behaviour" else "right", no_wrap=True)
    for r in result["behaviours"]:
        table.add_row(
            r["behaviour"],
            str(r["truth_terminals"]),
            str(r["flagged"]),
            str(r["tp"]),
            str(r["fp"]),
            str(r["fn"]),
            _pct(r["precision"]),
            _pct(r["recall"]),
            "-" if r["f1"] is None else f"{r['f1']:.3f}",
            *([_days(r)] if timed else []),
        )
    console.print(table)
    if timed:
        console.print(
            "days to flag: median (max) days from an injected behaviour's start to its "
            "terminal's first flag of it, over the true positives whose behaviour started "
            "within the runs' dates"
        )
    macro = result["macro_f1"]
    clean = result["clean"]
    console.print(
        f"macro F1 (behaviours in the truth): {'-' if macro is None else f'{macro:.3f}'}"
    )
    console.print(
        f"clean terminals flagged: {clean['clean_flagged']} of {clean['clean_terminals']} "
        f"(false-positive rate {_pct(clean['rate'])})"
    )
    for p in result["precision_at_k"]:
        console.print(
            f"Terminal Precision@{p['k']}: {_pct(p['precision'])} "
            f"({p['hits']} of the top {p['n']} flagged terminals have an injected behaviour)"
        )
    if result["analyst"]:
        a = result["analyst"]
        console.print(
            f"analyst-confirmed precision: {_pct(a['precision'])} "
            f"({a['confirmed']} confirmed, {a['dismissed']} dismissed)"
        )
    if result.get("labels") is not None:
        console.print(label_note(result["labels"]))


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``trialguard evaluate``."""
    try:
        truth = read_truth(args.truth)
        flags, terminals, dispositions, labels = read_store(settings, args.date_from, args.date_to)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = (labels["first_run"], labels["last_run"])
    result = evaluate(
        truth,
        flags,
        terminals,
        dispositions,
        ks=tuple(args.k or ()),
        window=runs if None not in runs else None,
    )
    result["labels"] = labels
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    return 0
