"""Common point of compromise (CPP): terminals where cards were used before fraud elsewhere.

The method is the acquirer specification of the domain reference (§2.1):

1. Labels: the cards ``F`` with a fraud report *known* as of the run date
   (``reported_at`` up to the end of ``as_of``), each with its ``first_fraud_ts``.
2. Each card's exposure window is ``[first_fraud_ts - L, first_fraud_ts - g]``; only
   non-fraud transactions count (the fraudulent ones, matched by the report's
   ``txn_id`` or by the same card within minutes of ``fraud_time``, are where the
   fraud *happened*, which is ``fraud_hotspot``, not where the data was stolen).
3. Per terminal ``t``, over its compromise period: ``k_t`` distinct F-cards seen in
   their windows, ``n_t`` distinct cards seen at ``t``, base rate ``p`` = F-cards with
   an exposure visit anywhere / all cards active anywhere, both over the same days
   (the patent's "fraction on dates D"). The period is the window with the smallest
   binomial tail (compared in log space: strong CPPs underflow ``sf``) among those
   that start on a day F-cards visited ``t`` and last 1, 2, 4, 8, ... days (a
   multiscale scan): a week-long compromise at a busy terminal is then not diluted
   by a month of normal trading, and F-cards spread evenly over the month give the
   month (no gain). Terminals with fewer than ``min_cards`` F-cards, which cannot be
   CPPs, keep the analysis window.
4. ``lift = k_t / (n_t p)``, one-sided binomial tail ``P(X >= k_t | n_t, p)`` times the
   number of windows the scan could have tried (trading days x lengths: Bonferroni),
   Benjamini-Hochberg across terminals, ``k_t >= 3`` and a minimum lift. CPPs are selected one at a time and each one's F-cards are
   "explained away" before the next terminal is judged: a compromised card also
   shops at its owner's other usual terminals, which would otherwise look like CPPs
   too (the reference's "suspect set, then ranked").
5. The same period (it starts on an F-card visit day) is the compromise period: every other card seen at ``t`` in it is at risk (tokens only).

Everything here is a pure function over polars frames; ``pipelines.detect.leakage``
does the reading. ``params`` holds the parameters and schemas, ``inputs`` builds the
labels and exposure visits, ``scan`` the statistics and the period scan; this
module assembles them (:func:`score_card_compromise`, :func:`at_risk_cards`).
"""

from __future__ import annotations

from datetime import date

import polars as pl

from features.schema import DETECTION_SCHEMA
from models.compromise.inputs import exposure_visits, known_reports
from models.compromise.params import (
    AT_RISK_SCHEMA,
    BEHAVIOUR,
    NETWORK,
    PERIODS_SCHEMA,
    STATS_SCHEMA,
    VISIT_DAYS_SCHEMA,
    CompromiseParams,
    CompromiseResult,
)
from models.compromise.scan import _explain_away, _scan_periods, _span_counts, bh_adjust


def reason(code: str, text: pl.Expr, observed: pl.Expr, threshold: float | None) -> pl.Expr:
    """One ``{code, text, observed, threshold}`` reason struct, as an expression."""
    return pl.struct(
        pl.lit(code).alias("code"),
        text.alias("text"),
        observed.cast(pl.Float64).alias("observed"),
        pl.lit(threshold, dtype=pl.Float64).alias("threshold"),
    )


def fmt(expr: pl.Expr, digits: int) -> pl.Expr:
    """A number rounded to ``digits`` as text."""
    return expr.round(digits).cast(pl.String)


def score_card_compromise(
    reports: pl.DataFrame,
    card_txns: pl.DataFrame,
    terminal_cards: pl.DataFrame,
    visit_days: pl.DataFrame,
    as_of: date,
    params: CompromiseParams | None = None,
) -> CompromiseResult:
    """Score every terminal as a common point of compromise on day ``as_of``.

    Each terminal is judged over its compromise period (domain.md §2.1, the patent's
    "fraction on dates D" and step 5): the window between two days on which F-cards
    visited it that is least likely under the network's rate over the same days, so
    a week-long compromise at a busy terminal is not diluted by a month of normal
    trading. ``k``, ``n`` and the base rate are all counted over that period, and the
    tail probability pays for the windows tried (Bonferroni) before the
    Benjamini-Hochberg step across terminals.

    Parameters
    ----------
    reports : pl.DataFrame
        Fraud reports: ``report_id``, ``card_token``, ``txn_id``, ``fraud_time``,
        ``reported_at``. Reports not yet known at the end of ``as_of`` are ignored.
    card_txns : pl.DataFrame
        Transactions of the reported cards: ``txn_id``, ``terminal_id``,
        ``card_token``, ``txn_time`` (other cards' rows are ignored).
    terminal_cards : pl.DataFrame
        ``terminal_id``, ``n_cards``: the terminals tested and their distinct cards
        over :meth:`CompromiseParams.window` (used when no F-card visited them).
    visit_days : pl.DataFrame
        ``VISIT_DAYS_SCHEMA`` rows over :meth:`CompromiseParams.window` of (at least)
        every terminal the reported cards visited, and of ``NETWORK``
        (see :func:`visit_day_counts`).
    as_of : date
        The run date.
    params : CompromiseParams, optional
        Thresholds; defaults when omitted.

    Returns
    -------
    CompromiseResult
        ``detections`` (``DETECTION_SCHEMA``, one row per CPP terminal, day ``as_of``),
        ``periods`` (``terminal_id``, ``period_start``, ``period_end``) of the CPPs,
        and ``stats`` (``STATS_SCHEMA``) for every terminal tested.
    """
    params = params or CompromiseParams()
    missing = {"terminal_id", "local_date", "prev_date", "n_cards"} - set(visit_days.columns)
    if missing:
        raise ValueError(
            f"visit_days lacks columns {sorted(missing)}; expected {VISIT_DAYS_SCHEMA.names()} "
            "(build it with visit_day_counts or pipelines.detect.leakage.read_visit_days)"
        )
    known = known_reports(reports, as_of)
    visits = exposure_visits(known, card_txns, as_of, params)
    if visits.height == 0 or terminal_cards.height == 0:
        return _empty_result()
    start, _ = params.window(as_of)
    network = visit_days.filter(
        (pl.col("terminal_id") == NETWORK) & pl.col("local_date").is_between(start, as_of)
    )
    if network.height == 0:
        return _empty_result()
    # the day matrices start at the first day with data (no card is active before it)
    first_day = max(start, network.get_column("local_date").min())
    n_days = (as_of - first_day).days + 1
    active_net = _span_counts(network, first_day, n_days)
    # every terminal and day each F-card used in the analysis window (n_t counts them too)
    presence = (
        card_txns.filter(pl.col("txn_time").dt.date().is_between(start, as_of))
        .join(visits.select("card_token").unique(), on="card_token", how="semi")
        .select("terminal_id", "card_token", pl.col("txn_time").dt.date().alias("local_date"))
        .unique()
    )
    periods = _scan_periods(visits, visit_days, first_day, n_days, params.min_cards)
    frame = (
        terminal_cards.select("terminal_id", pl.col("n_cards").cast(pl.Int64).alias("n"))
        .join(periods, on="terminal_id", how="left", suffix="_period")
        .select(
            "terminal_id",
            pl.coalesce("period_start", pl.lit(start)).alias("period_start"),
            pl.coalesce("period_end", pl.lit(as_of)).alias("period_end"),
            pl.col("n_windows").fill_null(1).cast(pl.Int64),
            pl.coalesce("n_period", "n").cast(pl.Int64).alias("n"),
        )
    )
    stats = _explain_away(visits, presence, frame, active_net, first_day, params)
    q_values = bh_adjust(stats.get_column("p_value").to_numpy())
    stats = stats.with_columns(pl.Series("q_value", q_values)).with_columns(
        (pl.col("selected") & (pl.col("q_value") <= params.fdr_q)).alias("flagged")
    )
    hits = stats.filter(pl.col("flagged"))
    m = stats.height
    reasons = pl.concat_list(
        reason(
            "cpp_fraud_cards",
            pl.format(
                "{} of {} cards seen here from {} to {} ({}%) were later reported as fraud "
                "elsewhere, seen 1-{} days before their first fraud (minimum {} cards)",
                pl.col("k"),
                pl.col("n"),
                pl.col("period_start").cast(pl.String),
                pl.col("period_end").cast(pl.String),
                fmt(100 * pl.col("k") / pl.col("n"), 2),
                pl.lit(params.lookback_days),
                pl.lit(params.min_cards),
            ),
            pl.col("k"),
            params.min_cards,
        ),
        reason(
            "cpp_lift",
            pl.format(
                "{}x the base rate: {}% of all cards active then were later reported "
                "(minimum {}x)",
                fmt(pl.col("lift"), 1),
                fmt(100 * pl.col("base_rate"), 3),
                pl.lit(params.min_lift),
            ),
            pl.col("lift"),
            params.min_lift,
        ),
        reason(
            "cpp_significance",
            pl.format(
                "binomial tail p = {} (times the {} windows searched), Benjamini-Hochberg "
                "q = {} across {} terminals (maximum q {})",
                sci(pl.col("p_value")),
                pl.col("n_windows"),
                sci(pl.col("q_value")),
                pl.lit(m),
                pl.lit(params.fdr_q),
            ),
            pl.col("q_value"),
            params.fdr_q,
        ),
        reason(
            "cpp_period",
            pl.format(
                "compromise period {} to {}: other cards seen here then are at risk",
                pl.col("period_start").cast(pl.String),
                pl.col("period_end").cast(pl.String),
            ),
            (pl.col("period_end") - pl.col("period_start")).dt.total_days() + 1,
            None,
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
    periods = hits.select("terminal_id", "period_start", "period_end").cast(dict(PERIODS_SCHEMA))
    return CompromiseResult(detections, periods, stats.select(STATS_SCHEMA.names()))


def sci(expr: pl.Expr) -> pl.Expr:
    """A probability as text in scientific notation (``1.2e-6``), as an expression."""
    v = expr.clip(1e-300, 1.0)
    exponent = v.log10().floor()
    mantissa = (v / pl.lit(10.0).pow(exponent)).round(1)
    return pl.format("{}e{}", mantissa.cast(pl.String), exponent.cast(pl.Int64).cast(pl.String))


def _empty_result() -> CompromiseResult:
    return CompromiseResult(
        pl.DataFrame(schema=DETECTION_SCHEMA),
        pl.DataFrame(schema=PERIODS_SCHEMA),
        pl.DataFrame(schema=STATS_SCHEMA),
    )


def at_risk_cards(
    period_txns: pl.DataFrame, periods: pl.DataFrame, reports: pl.DataFrame
) -> pl.DataFrame:
    """Other cards seen at a compromised terminal during its compromise period.

    Parameters
    ----------
    period_txns : pl.DataFrame
        Transactions at (at least) the compromised terminals: ``terminal_id``,
        ``card_token``, ``card_bin``, ``card_last4``, ``txn_time``.
    periods : pl.DataFrame
        ``terminal_id``, ``period_start``, ``period_end`` (days, inclusive).
    reports : pl.DataFrame
        Known fraud reports; their cards are already known to issuers and are left out.

    Returns
    -------
    pl.DataFrame
        ``AT_RISK_SCHEMA``: one row per terminal and card, tokens only.
    """
    reported = reports.get_column("card_token").unique()
    return (
        period_txns.join(periods, on="terminal_id", how="inner")
        .filter(
            pl.col("txn_time").dt.date().is_between(pl.col("period_start"), pl.col("period_end"))
            & ~pl.col("card_token").is_in(reported.implode())
        )
        .group_by("terminal_id", "card_token")
        .agg(
            pl.col("card_bin").drop_nulls().first(),
            pl.col("card_last4").drop_nulls().first(),
            pl.col("txn_time").min().alias("first_seen"),
            pl.col("txn_time").max().alias("last_seen"),
        )
        .sort("terminal_id", "card_token")
        .cast(dict(AT_RISK_SCHEMA))
        .select(AT_RISK_SCHEMA.names())
    )
