"""The inputs of the common-point-of-compromise test, from stored frames: fraud reports known by the run date, the fraudulent transactions they match (where fraud happened, not where data was stolen), each card's first fraud, per-terminal card counts and the exposure visits of fraud cards within their windows."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta

import polars as pl

from models.compromise.params import NETWORK, VISIT_DAYS_SCHEMA, CompromiseParams


def known_reports(reports: pl.DataFrame, as_of: date) -> pl.DataFrame:
    """Reports the acquirer knew at the end of ``as_of`` (``reported_at`` before the next day)."""
    cutoff = datetime.combine(as_of + timedelta(days=1), time())
    return reports.filter(pl.col("reported_at") < cutoff)


def match_fraud_transactions(
    reports: pl.DataFrame, txns: pl.DataFrame, match_minutes: int
) -> pl.DataFrame:
    """Transactions that are the reported fraud itself.

    A transaction is fraud when a report names its ``txn_id``, or when a report for
    the same card has a ``fraud_time`` within ``match_minutes`` of it.

    Parameters
    ----------
    reports : pl.DataFrame
        ``report_id``, ``card_token``, ``txn_id`` (may be null), ``fraud_time``.
    txns : pl.DataFrame
        Transactions with at least ``txn_id``, ``card_token``, ``txn_time``.
    match_minutes : int
        Tolerance of the card-and-time match.

    Returns
    -------
    pl.DataFrame
        The matching rows of ``txns`` (each once) with the ``report_id`` that matched.
    """
    tol = pl.duration(minutes=match_minutes)
    by_id = txns.join(
        reports.select("txn_id", "report_id").drop_nulls("txn_id"), on="txn_id", how="inner"
    )
    by_time = txns.join(
        reports.select("card_token", "fraud_time", "report_id"), on="card_token", how="inner"
    ).filter((pl.col("txn_time") - pl.col("fraud_time")).abs() <= tol)
    cols = [*txns.columns, "report_id"]
    return pl.concat([by_id.select(cols), by_time.select(cols)], how="vertical").unique(
        "txn_id", keep="first", maintain_order=True
    )


def first_fraud(reports: pl.DataFrame) -> pl.DataFrame:
    """One row per reported card: ``card_token``, ``first_fraud_ts``."""
    return reports.group_by("card_token").agg(pl.col("fraud_time").min().alias("first_fraud_ts"))


def terminal_card_counts(txns: pl.DataFrame, start: date, end: date) -> tuple[pl.DataFrame, int]:
    """``n_t`` per terminal and the number of active cards, from row-level transactions.

    ``pipelines.detect.leakage`` computes the same two numbers in SQL; this is the reference.
    """
    inside = txns.filter(pl.col("txn_time").dt.date().is_between(start, end))
    per_terminal = inside.group_by("terminal_id").agg(
        pl.col("card_token").n_unique().cast(pl.Int64).alias("n_cards")
    )
    return per_terminal, int(inside.get_column("card_token").n_unique())


def _with_prev_date(card_days: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """``card_days`` (``keys``, ``card_token``, ``local_date``) with each card's previous day.

    Returns ``VISIT_DAYS_SCHEMA`` rows: distinct cards per key, day and previous day.
    """
    return (
        card_days.unique()
        .sort([*keys, "card_token", "local_date"])
        .with_columns(pl.col("local_date").shift(1).over([*keys, "card_token"]).alias("prev_date"))
        .group_by([*keys, "local_date", "prev_date"])
        .agg(pl.len().cast(pl.Int64).alias("n_cards"))
    )


def visit_day_counts(txns: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """Distinct cards per terminal and day by the day of their previous visit there.

    The reference of what ``pipelines.detect.leakage`` reads from the ``card_visit_days`` table
    (``VISIT_DAYS_SCHEMA``; ``terminal_id = '*'`` counts visits at any terminal): the
    distinct cards of a terminal over any ``[a, b]`` inside ``[start, end]`` are the
    rows of days ``a..b`` whose ``prev_date`` is before ``a`` or null.
    """
    inside = txns.filter(pl.col("txn_time").dt.date().is_between(start, end)).select(
        "terminal_id", "card_token", pl.col("txn_time").dt.date().alias("local_date")
    )
    network = inside.select(pl.lit(NETWORK).alias("terminal_id"), "card_token", "local_date")
    rows = pl.concat([inside, network], how="vertical")
    return _with_prev_date(rows, ["terminal_id"]).select(VISIT_DAYS_SCHEMA.names())


def _period_visits(visits: pl.DataFrame, terminals: pl.DataFrame) -> pl.DataFrame:
    """Rows of ``visits`` at ``terminals`` inside their periods."""
    return visits.join(
        terminals.select("terminal_id", "period_start", "period_end"), on="terminal_id"
    ).filter(pl.col("txn_time").dt.date().is_between(pl.col("period_start"), pl.col("period_end")))


def _period_cards(visits: pl.DataFrame, terminals: pl.DataFrame) -> pl.Series:
    """Distinct F-cards of ``visits`` seen at ``terminals`` inside their periods."""
    return _period_visits(visits, terminals).get_column("card_token").unique()


def exposure_visits(
    reports: pl.DataFrame, card_txns: pl.DataFrame, as_of: date, params: CompromiseParams
) -> pl.DataFrame:
    """Non-fraud visits of reported cards inside their exposure windows.

    ``reports`` must already be the known ones (see :func:`known_reports`).
    Returns ``card_txns`` rows plus ``first_fraud_ts``.
    """
    horizon = datetime.combine(as_of - timedelta(days=params.report_days), time())
    ff = first_fraud(reports).filter(pl.col("first_fraud_ts") >= horizon)
    fraud_ids = match_fraud_transactions(reports, card_txns, params.match_minutes).get_column(
        "txn_id"
    )
    return (
        card_txns.filter(~pl.col("txn_id").is_in(fraud_ids.implode()))
        .join(ff, on="card_token", how="inner")
        .filter(
            pl.col("txn_time").is_between(
                pl.col("first_fraud_ts") - pl.duration(days=params.lookback_days),
                pl.col("first_fraud_ts") - pl.duration(days=params.gap_days),
            )
        )
    )
