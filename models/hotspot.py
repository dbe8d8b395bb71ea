"""Fraud hotspot: reported fraud concentrated on a terminal's own transactions.

A hotspot is where fraud *happens* (stolen or counterfeit cards accepted here),
the opposite of a common point of compromise (where card data was stolen before
fraud elsewhere). Fraud reports known as of the run date are matched to the
terminal's transactions by ``txn_id``, or by card and time; the terminal's
fraud-to-sales ratio (by count and by amount) over the last days is compared with
its peers' (all other terminals), with the same statistics as the CPP detector
(binomial tail, Benjamini-Hochberg, a minimum count).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, NamedTuple

import polars as pl

from features.schema import CAP_TXN_TYPES, DETECTION_SCHEMA, MAX_EVIDENCE
from models.compromise import fmt, reason, sci
from models.compromise.inputs import known_reports, match_fraud_transactions
from models.compromise.params import params_from_config
from models.compromise.scan import bh_adjust, binomial_tail

BEHAVIOUR = "fraud_hotspot"
#: Transaction types that make "sales" (and fraud) for the fraud-to-sales ratios.
SALE_TYPES: tuple[str, ...] = CAP_TXN_TYPES

STATS_SCHEMA = pl.Schema(
    {
        "terminal_id": pl.String(),
        "n_sales": pl.Int64(),
        "sales_amount": pl.Int64(),
        "n_fraud": pl.Int64(),
        "fraud_amount": pl.Int64(),
        "peer_rate": pl.Float64(),
        "peer_amount_rate": pl.Float64(),
        "lift": pl.Float64(),
        "amount_lift": pl.Float64(),
        "p_value": pl.Float64(),
        "q_value": pl.Float64(),
        "flagged": pl.Boolean(),
    }
)


@dataclass(frozen=True)
class HotspotParams:
    """Thresholds of the hotspot detector (``[fraud_hotspot]`` in ``models/thresholds.toml``).

    Parameters
    ----------
    lookback_days : int
        Days (ending on the run date) whose sales and fraud are compared.
    match_minutes : int
        Tolerance of the card-and-time match of a report without a usable ``txn_id``.
    min_fraud : int
        Smallest number of fraudulent sales at the terminal.
    min_lift : float
        Smallest ratio of the terminal's fraud-to-sales (by count) to its peers'.
    fdr_q : float
        Benjamini-Hochberg false-discovery rate across terminals.
    """

    lookback_days: int = 30
    match_minutes: int = 10
    min_fraud: int = 3
    min_lift: float = 5.0
    fdr_q: float = 0.05

    def __post_init__(self) -> None:
        if self.lookback_days < 1 or self.min_fraud < 1 or self.match_minutes < 0:
            raise ValueError(
                "fraud_hotspot needs lookback_days >= 1, min_fraud >= 1, match_minutes >= 0; "
                f"got {self.lookback_days}, {self.min_fraud}, {self.match_minutes}"
            )
        if not 0 < self.fdr_q < 1:
            raise ValueError(f"fraud_hotspot fdr_q must be in (0, 1); got {self.fdr_q}")

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> HotspotParams:
        """Parameters from a loaded thresholds config (section ``fraud_hotspot``)."""
        return params_from_config(cls, BEHAVIOUR, config)

    def window(self, as_of: date) -> tuple[date, date]:
        """First and last day (inclusive) of the sales compared on ``as_of``."""
        return as_of - timedelta(days=self.lookback_days - 1), as_of


class HotspotResult(NamedTuple):
    """What :func:`score_fraud_hotspot` returns."""

    detections: pl.DataFrame
    stats: pl.DataFrame


def terminal_sales(txns: pl.DataFrame, start: date, end: date) -> pl.DataFrame:
    """Sales count and amount per terminal over ``[start, end]`` from row-level transactions.

    ``pipelines.detect.leakage`` computes the same in SQL; this is the reference.
    """
    return (
        txns.filter(
            pl.col("txn_time").dt.date().is_between(start, end)
            & pl.col("txn_type").is_in(SALE_TYPES)
        )
        .group_by("terminal_id")
        .agg(
            pl.len().cast(pl.Int64).alias("n_sales"),
            pl.col("amount_minor").sum().cast(pl.Int64).alias("sales_amount"),
        )
    )


def score_fraud_hotspot(
    reports: pl.DataFrame,
    card_txns: pl.DataFrame,
    sales: pl.DataFrame,
    as_of: date,
    params: HotspotParams | None = None,
) -> HotspotResult:
    """Score every terminal as a fraud hotspot on day ``as_of``.

    Parameters
    ----------
    reports : pl.DataFrame
        ``report_id``, ``card_token``, ``txn_id``, ``fraud_time``, ``reported_at``;
        reports not known at the end of ``as_of`` are ignored.
    card_txns : pl.DataFrame
        Transactions of the reported cards: ``txn_id``, ``terminal_id``,
        ``card_token``, ``txn_time``, ``txn_type``, ``amount_minor``.
    sales : pl.DataFrame
        ``terminal_id``, ``n_sales``, ``sales_amount`` over :meth:`HotspotParams.window`
        (see :func:`terminal_sales`).
    as_of : date
        The run date.
    params : HotspotParams, optional
        Thresholds; defaults when omitted.

    Returns
    -------
    HotspotResult
        ``detections`` (``DETECTION_SCHEMA``) and per-terminal ``stats``.
    """
    params = params or HotspotParams()
    start, end = params.window(as_of)
    known = known_reports(reports, as_of)
    fraud = match_fraud_transactions(known, card_txns, params.match_minutes).filter(
        pl.col("txn_time").dt.date().is_between(start, end) & pl.col("txn_type").is_in(SALE_TYPES)
    )
    per_terminal = fraud.group_by("terminal_id").agg(
        pl.len().cast(pl.Int64).alias("n_fraud"),
        pl.col("amount_minor").sum().cast(pl.Int64).alias("fraud_amount"),
        pl.col("txn_id").sort_by("txn_time").head(MAX_EVIDENCE).alias("evidence"),
    )
    stats = (
        sales.select(
            "terminal_id",
            pl.col("n_sales").cast(pl.Int64),
            pl.col("sales_amount").cast(pl.Int64),
        )
        .join(per_terminal, on="terminal_id", how="left")
        .with_columns(pl.col("n_fraud", "fraud_amount").fill_null(0))
        .with_columns(pl.max_horizontal("n_sales", "n_fraud").alias("n_sales"))
        .filter(pl.col("n_sales") > 0)
        .sort("terminal_id")
    )
    if stats.height == 0 or stats.get_column("n_fraud").sum() == 0:
        return HotspotResult(
            pl.DataFrame(schema=DETECTION_SCHEMA), pl.DataFrame(schema=STATS_SCHEMA)
        )
    total_sales, total_amount = stats["n_sales"].sum(), stats["sales_amount"].sum()
    total_fraud, total_fraud_amount = stats["n_fraud"].sum(), stats["fraud_amount"].sum()
    # Peers are all other terminals (leave-one-out, so a hotspot does not raise its own
    # yardstick); one fraud is added to the peers so that "no fraud elsewhere" is not a rate
    # of zero.
    stats = stats.with_columns(
        ((total_fraud - pl.col("n_fraud") + 1) / (total_sales - pl.col("n_sales") + 1)).alias(
            "peer_rate"
        ),
        (
            (total_fraud_amount - pl.col("fraud_amount") + 1)
            / (total_amount - pl.col("sales_amount") + 1)
        ).alias("peer_amount_rate"),
    ).with_columns(
        (pl.col("n_fraud") / pl.col("n_sales") / pl.col("peer_rate")).alias("lift"),
        (
            pl.col("fraud_amount")
            / pl.max_horizontal(pl.col("sales_amount"), 1)
            / pl.col("peer_amount_rate")
        ).alias("amount_lift"),
    )
    p_values = binomial_tail(
        stats["n_fraud"].to_numpy(),
        stats["n_sales"].to_numpy(),
        stats["peer_rate"].clip(0.0, 1.0).to_numpy(),
    )
    stats = stats.with_columns(
        pl.Series("p_value", p_values), pl.Series("q_value", bh_adjust(p_values))
    ).with_columns(
        (
            (pl.col("n_fraud") >= params.min_fraud)
            & (pl.col("lift") >= params.min_lift)
            & (pl.col("q_value") <= params.fdr_q)
        ).alias("flagged")
    )
    hits = stats.filter(pl.col("flagged"))
    reasons = pl.concat_list(
        reason(
            "hotspot_fraud_count",
            pl.format(
                "{} of {} sales here in the last {} days ({}%) were reported as fraud "
                "(minimum {})",
                pl.col("n_fraud"),
                pl.col("n_sales"),
                pl.lit(params.lookback_days),
                fmt(100 * pl.col("n_fraud") / pl.col("n_sales"), 2),
                pl.lit(params.min_fraud),
            ),
            pl.col("n_fraud"),
            params.min_fraud,
        ),
        reason(
            "hotspot_lift",
            pl.format(
                "fraud-to-sales by count is {}x that of other terminals ({}%; minimum {}x)",
                fmt(pl.col("lift"), 1),
                fmt(100 * pl.col("peer_rate"), 3),
                pl.lit(params.min_lift),
            ),
            pl.col("lift"),
            params.min_lift,
        ),
        reason(
            "hotspot_amount",
            pl.format(
                "fraud is {}% of the sales amount here ({} of {} minor units), {}x that of "
                "other terminals ({}%)",
                fmt(
                    100 * pl.col("fraud_amount") / pl.max_horizontal(pl.col("sales_amount"), 1), 2
                ),
                pl.col("fraud_amount"),
                pl.col("sales_amount"),
                fmt(pl.col("amount_lift"), 1),
                fmt(100 * pl.col("peer_amount_rate"), 3),
            ),
            pl.col("amount_lift"),
            None,
        ),
        reason(
            "hotspot_significance",
            pl.format(
                "binomial tail p = {}, Benjamini-Hochberg q = {} across {} terminals "
                "(maximum q {})",
                sci(pl.col("p_value")),
                sci(pl.col("q_value")),
                pl.lit(stats.height),
                pl.lit(params.fdr_q),
            ),
            pl.col("q_value"),
            params.fdr_q,
        ),
    )
    detections = hits.select(
        "terminal_id",
        pl.lit(BEHAVIOUR).alias("behaviour"),
        pl.lit(as_of, dtype=pl.Date).alias("day"),
        (1.0 - pl.col("q_value")).clip(0.0, 1.0).alias("score"),
        reasons.alias("reasons"),
        pl.col("evidence"),
    ).cast(dict(DETECTION_SCHEMA))
    return HotspotResult(detections, stats.select(STATS_SCHEMA.names()))
