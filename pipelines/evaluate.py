"""``trialguard evaluate``: precision and recall per behaviour against a truth file.

The truth file is the simulator's ``truth.csv`` (``terminal_id, behaviour, start,
end``). Flags come from the store; the metrics are ``models.evaluation``'s.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
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
    return truth.select(TRUTH_COLUMNS).drop_nulls()


def _frame(con, sql: str, params: list[Any] | None = None) -> pl.DataFrame:
    return pl.from_arrow(con.sql(sql, params=params or None).to_arrow_table())


def read_store(
    settings: Settings, date_from: date | None = None, date_to: date | None = None
) -> tuple[pl.DataFrame, list[str], pl.DataFrame]:
    """Flags (restricted to the date range), all terminal ids, and dispositions."""
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
    finally:
        con.close()
    if date_from is not None or date_to is not None:
        dispositions = dispositions.filter(pl.col("flag_id").is_in(flags["flag_id"].implode()))
    return flags, terminals, dispositions


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def print_report(result: dict[str, Any], console=None) -> None:
    """The metrics as readable tables (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    table = Table(title="Terminal-level quality per behaviour")
    for col in ("behaviour", "truth", "flagged", "TP", "FP", "FN", "precision", "recall", "F1"):
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
        )
    console.print(table)
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


def main(args: argparse.Namespace, settings: Settings) -> int:
    """Entry point of ``trialguard evaluate``."""
    try:
        truth = read_truth(args.truth)
        flags, terminals, dispositions = read_store(settings, args.date_from, args.date_to)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result = evaluate(truth, flags, terminals, dispositions, ks=tuple(args.k or ()))
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print_report(result)
    return 0
