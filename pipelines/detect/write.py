"""Writes of a run: flags, at-risk cards, the day's ``terminal_day`` rows and the ``runs`` row."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any

import duckdb
import polars as pl

from features.schema import AT_RISK_CARDS_COLUMNS, FLAGS_COLUMNS, TERMINAL_DAY_COLUMNS
from pipelines.detect.store import _exec


def _flags_as_table(flags: pl.DataFrame) -> pl.DataFrame:
    """Flag frame (lists) -> the columns of the ``flags`` table (JSON text)."""
    reasons = [json.dumps(r, ensure_ascii=False) for r in flags.get_column("reasons").to_list()]
    evidence = [json.dumps(e) for e in flags.get_column("evidence").to_list()]
    return flags.with_columns(
        pl.Series("reasons", reasons, dtype=pl.String),
        pl.Series("evidence", evidence, dtype=pl.String),
    ).select([c.name for c in FLAGS_COLUMNS])


def _at_risk_rows(at_risk: pl.DataFrame, flags: pl.DataFrame, run_id: str) -> pl.DataFrame:
    """At-risk cards with the flag_id of their terminal's card_compromise flag."""
    names = [c.name for c in AT_RISK_CARDS_COLUMNS]
    if at_risk is None or at_risk.height == 0:
        return pl.DataFrame(schema={n: pl.String for n in names}).cast(
            {"first_seen": pl.Datetime("us"), "last_seen": pl.Datetime("us")}
        )
    cc = flags.filter(pl.col("behaviour") == "card_compromise").select("terminal_id", "flag_id")
    return (
        at_risk.join(cc, on="terminal_id", how="inner")
        .with_columns(pl.lit(run_id).alias("run_id"))
        .select(names)
    )


def _insert(con: duckdb.DuckDBPyConnection, table: str, df: pl.DataFrame) -> None:
    if df.height == 0:
        return
    con.register("_tg_insert", df.to_arrow())
    try:
        cols = ", ".join(df.columns)
        _exec(con, f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _tg_insert")
    finally:
        con.unregister("_tg_insert")


def _write(
    con: duckdb.DuckDBPyConnection,
    as_of: date,
    day: pl.DataFrame,
    flags_table: pl.DataFrame,
    at_risk_rows: pl.DataFrame,
    run_id: str,
) -> None:
    """Upsert the day's terminal_day rows and the touched flags; replace their at-risk cards."""
    td_cols = [c.name for c in TERMINAL_DAY_COLUMNS]
    td = day.with_columns(pl.lit(run_id).alias("run_id")).select(td_cols)
    _exec(con, "BEGIN TRANSACTION")
    try:
        _exec(con, "DELETE FROM terminal_day WHERE local_date = ?", [as_of])
        _insert(con, "terminal_day", td)
        if flags_table.height:
            ids = flags_table.select("flag_id")
            con.register("_tg_ids", ids.to_arrow())
            _exec(con, "DELETE FROM flags WHERE flag_id IN (SELECT flag_id FROM _tg_ids)")
            con.unregister("_tg_ids")
            _insert(con, "flags", flags_table)
        if at_risk_rows.height:
            ids = at_risk_rows.select("flag_id").unique()
            con.register("_tg_ids", ids.to_arrow())
            _exec(con, "DELETE FROM at_risk_cards WHERE flag_id IN (SELECT flag_id FROM _tg_ids)")
            con.unregister("_tg_ids")
            _insert(con, "at_risk_cards", at_risk_rows)
        _exec(con, "COMMIT")
    except Exception:
        _exec(con, "ROLLBACK")
        raise


def _record_run(
    con: duckdb.DuckDBPyConnection, run_id: str, as_of: date, started: datetime, **values: Any
) -> None:
    """Insert or update the ``runs`` row of this run."""
    _exec(con, "DELETE FROM runs WHERE run_id = ?", [run_id])
    cols = ["run_id", "command", "as_of", "started_at", *values]
    params = [run_id, "run", as_of, started, *values.values()]
    _exec(
        con,
        f"INSERT INTO runs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
        params,
    )
