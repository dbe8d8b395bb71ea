"""Common point of compromise (CPP): terminals where cards were used before fraud elsewhere.

The method is the acquirer specification of the domain reference (§2.1):

1. Labels: the cards ``F`` with a fraud report *known* as of the run date
   (``reported_at`` up to the end of ``as_of``), each with its ``first_fraud_ts``.
2. Each card's exposure window is ``[first_fraud_ts - L, first_fraud_ts - g]``; only
   non-fraud transactions count (the fraudulent ones, matched by the report's
   ``txn_id`` or by the same card within minutes of ``fraud_time``, are where the
   fraud *happened*, which is ``fraud_hotspot``, not where the data was stolen).
3. Per terminal ``t``: ``k_t`` distinct F-cards seen in their windows, ``n_t``
   distinct cards over the analysis window; base rate ``p`` = F-cards seen in their
   windows / all active cards.
4. ``lift = k_t / (n_t p)``, one-sided binomial tail ``P(X >= k_t | n_t, p)``,
   Benjamini-Hochberg across terminals, ``k_t >= 3`` and a minimum lift. CPPs are
   selected one at a time and each one's F-cards are "explained away" before the
   next terminal is judged: a compromised card also shops at its owner's other
   usual terminals, which would otherwise look like CPPs too (the reference's
   "suspect set, then ranked").
5. Compromise period = [first, last] day of F-card visits at ``t``; every other
   card seen at ``t`` in that period is at risk (tokens only).

Everything here is a pure function over polars frames; ``pipelines.leakage``
does the reading.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime, time, timedelta
from typing import Any, NamedTuple

import numpy as np
import polars as pl
from scipy.stats import binom

from features.schema import DETECTION_SCHEMA, MAX_EVIDENCE

BEHAVIOUR = "card_compromise"

#: Columns of the per-terminal statistics frame (useful for tuning and reports).
STATS_SCHEMA = pl.Schema(
    {
        "terminal_id": pl.String(),
        "k": pl.Int64(),
        "n": pl.Int64(),
        "base_rate": pl.Float64(),
        "lift": pl.Float64(),
        "p_value": pl.Float64(),
        "q_value": pl.Float64(),
        "flagged": pl.Boolean(),
    }
)
PERIODS_SCHEMA = pl.Schema(
    {"terminal_id": pl.String(), "period_start": pl.Date(), "period_end": pl.Date()}
)
AT_RISK_SCHEMA = pl.Schema(
    {
        "terminal_id": pl.String(),
        "card_token": pl.String(),
        "card_bin": pl.String(),
        "card_last4": pl.String(),
        "first_seen": pl.Datetime("us"),
        "last_seen": pl.Datetime("us"),
    }
)


def params_from_config(cls: type, section: str, config: dict[str, Any] | None) -> Any:
    """Build a parameter dataclass from ``config[section]``; unknown keys are an error."""
    values = dict((config or {}).get(section) or {})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"[{section}] has unknown keys {unknown}; the known keys are {sorted(known)}. "
            "Fix the spelling in models/thresholds.toml."
        )
    return cls(**values)


@dataclass(frozen=True)
class CompromiseParams:
    """Thresholds of the CPP detector (``[card_compromise]`` in ``models/thresholds.toml``).

    Parameters
    ----------
    lookback_days : int
        ``L``: how many days before a card's first fraud its visits count.
    gap_days : int
        ``g``: visits closer than this to the first fraud do not count.
    report_days : int
        Reports whose first fraud is older than this (before ``as_of``) are dropped.
    match_minutes : int
        A transaction of a reported card within this many minutes of ``fraud_time``
        is the fraud itself and is excluded from exposure.
    min_cards : int
        Smallest ``k_t`` that can make a CPP.
    min_lift : float
        Smallest ``k_t / (n_t p)``.
    fdr_q : float
        Benjamini-Hochberg false-discovery rate.
    """

    lookback_days: int = 30
    gap_days: int = 1
    report_days: int = 90
    match_minutes: int = 10
    min_cards: int = 3
    min_lift: float = 3.0
    fdr_q: float = 0.05

    def __post_init__(self) -> None:
        if self.lookback_days <= self.gap_days or self.gap_days < 0:
            raise ValueError(
                f"card_compromise needs 0 <= gap_days < lookback_days; got gap_days="
                f"{self.gap_days}, lookback_days={self.lookback_days}"
            )
        if not 0 < self.fdr_q < 1:
            raise ValueError(f"card_compromise fdr_q must be in (0, 1); got {self.fdr_q}")
        if self.min_cards < 1 or self.report_days < 1 or self.match_minutes < 0:
            raise ValueError(
                "card_compromise needs min_cards >= 1, report_days >= 1, match_minutes >= 0; "
                f"got {self.min_cards}, {self.report_days}, {self.match_minutes}"
            )

    @classmethod
    def from_config(cls, config: dict[str, Any] | None) -> CompromiseParams:
        """Parameters from a loaded thresholds config (section ``card_compromise``)."""
        return params_from_config(cls, BEHAVIOUR, config)

    def window(self, as_of: date) -> tuple[date, date]:
        """First and last day (inclusive) of transactions the detector can use on ``as_of``."""
        return as_of - timedelta(days=self.report_days + self.lookback_days), as_of


class CompromiseResult(NamedTuple):
    """What :func:`score_card_compromise` returns."""

    detections: pl.DataFrame
    periods: pl.DataFrame
    stats: pl.DataFrame


# ---------------------------------------------------------------------------
# Statistics
# ---------------------------------------------------------------------------


def binomial_tail(k: np.ndarray, n: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """One-sided binomial tail ``P(X >= k)`` for ``X ~ Binomial(n, p)``.

    Examples
    --------
    >>> round(float(binomial_tail(np.array([1]), np.array([2]), 0.5)[0]), 2)
    0.75
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    if np.any(k < 0) or np.any(n < 0) or np.any(k > n):
        raise ValueError("binomial_tail needs 0 <= k <= n; check the counts passed in")
    return np.where(k <= 0, 1.0, binom.sf(k - 1, n, p))


def bh_adjust(p_values: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values), in the input order.

    Examples
    --------
    >>> bh_adjust(np.array([0.01, 0.04, 0.03])).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p_values, dtype=np.float64)
    m = p.size
    if m == 0:
        return p.copy()
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("bh_adjust needs p-values in [0, 1] without NaN")
    order = np.argsort(p, kind="stable")
    ranked = p[order] * m / np.arange(1, m + 1)
    q = np.minimum(np.minimum.accumulate(ranked[::-1])[::-1], 1.0)
    out = np.empty(m)
    out[order] = q
    return out


# ---------------------------------------------------------------------------
# Matching reports to transactions
# ---------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------


def terminal_card_counts(txns: pl.DataFrame, start: date, end: date) -> tuple[pl.DataFrame, int]:
    """``n_t`` per terminal and the number of active cards, from row-level transactions.

    ``pipelines.leakage`` computes the same two numbers in SQL; this is the reference.
    """
    inside = txns.filter(pl.col("txn_time").dt.date().is_between(start, end))
    per_terminal = inside.group_by("terminal_id").agg(
        pl.col("card_token").n_unique().cast(pl.Int64).alias("n_cards")
    )
    return per_terminal, int(inside.get_column("card_token").n_unique())


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


def _terminal_tests(
    visits: pl.DataFrame, n_frame: pl.DataFrame, removed: pl.DataFrame, base: float
) -> pl.DataFrame:
    """k_t, n_t (less the removed cards seen at t), lift and binomial tail per terminal."""
    per_terminal = visits.group_by("terminal_id").agg(
        pl.col("card_token").n_unique().cast(pl.Int64).alias("k"),
        pl.col("txn_time").min().dt.date().alias("period_start"),
        pl.col("txn_time").max().dt.date().alias("period_end"),
        pl.col("txn_id").sort_by("txn_time").head(MAX_EVIDENCE).alias("evidence"),
    )
    gone = removed.group_by("terminal_id").agg(pl.len().cast(pl.Int64).alias("gone"))
    stats = (
        n_frame.join(per_terminal, on="terminal_id", how="left")
        .join(gone, on="terminal_id", how="left")
        .with_columns(pl.col("k", "gone").fill_null(0))
        # a card seen in its window is also counted in n_t; guard against inconsistent inputs
        .with_columns(pl.max_horizontal(pl.col("n") - pl.col("gone"), "k").alias("n"))
        .drop("gone")
        .sort("terminal_id")
    )
    p_values = binomial_tail(stats["k"].to_numpy(), stats["n"].to_numpy(), base)
    return stats.with_columns(
        pl.lit(base).alias("base_rate"),
        (pl.col("k") / (pl.col("n") * base)).fill_nan(0.0).alias("lift"),
        pl.Series("p_value", p_values),
    )


def _explain_away(
    visits: pl.DataFrame,
    presence: pl.DataFrame,
    n_frame: pl.DataFrame,
    n_active: int,
    params: CompromiseParams,
) -> pl.DataFrame:
    """Select CPPs one at a time; each one's F-cards are explained and leave the data.

    A compromised card also shops at its owner's other usual terminals, so those
    terminals share many F-cards with the real point of compromise and look like
    CPPs too. The terminal that explains the most (smallest tail probability) is
    taken first; its F-cards are then removed (from ``k``, ``n`` and the base rate)
    before the next terminal is judged, so a terminal is only a CPP on the cards the
    earlier ones do not explain. Candidates must pass the Benjamini-Hochberg bound
    for their rank (``p <= q r / m``), ``k >= min_cards`` and ``lift >= min_lift``.
    """
    m = n_frame.height
    n_fraud = visits.get_column("card_token").n_unique()
    explained = pl.Series("card_token", [], dtype=pl.String)
    selected: list[pl.DataFrame] = []
    while True:
        left_visits = visits.filter(~pl.col("card_token").is_in(explained.implode()))
        removed = presence.filter(pl.col("card_token").is_in(explained.implode()))
        n_left = n_fraud - explained.len()
        active_left = n_active - explained.len()
        if n_left <= 0 or active_left <= 0:
            stats = _terminal_tests(left_visits, n_frame, removed, 1.0)
            break
        stats = _terminal_tests(left_visits, n_frame, removed, min(n_left / active_left, 1.0))
        done = [s.item(0, "terminal_id") for s in selected]
        rank = len(selected) + 1
        candidates = stats.filter(
            ~pl.col("terminal_id").is_in(done)
            & (pl.col("k") >= params.min_cards)
            & (pl.col("lift") >= params.min_lift)
            & (pl.col("p_value") <= params.fdr_q * rank / m)
        )
        if candidates.height == 0:
            break
        best = candidates.sort(["p_value", "terminal_id"]).head(1)
        selected.append(best)
        cards = left_visits.filter(pl.col("terminal_id") == best.item(0, "terminal_id"))
        explained = pl.concat([explained, cards.get_column("card_token").unique()])
    done = [s.item(0, "terminal_id") for s in selected]
    rest = stats.filter(~pl.col("terminal_id").is_in(done)).with_columns(
        pl.lit(False).alias("selected")
    )
    chosen = [s.with_columns(pl.lit(True).alias("selected")) for s in selected]
    return pl.concat([*chosen, rest], how="vertical").sort("terminal_id")


def score_card_compromise(
    reports: pl.DataFrame,
    card_txns: pl.DataFrame,
    terminal_cards: pl.DataFrame,
    n_active_cards: int,
    as_of: date,
    params: CompromiseParams | None = None,
) -> CompromiseResult:
    """Score every terminal as a common point of compromise on day ``as_of``.

    Parameters
    ----------
    reports : pl.DataFrame
        Fraud reports: ``report_id``, ``card_token``, ``txn_id``, ``fraud_time``,
        ``reported_at``. Reports not yet known at the end of ``as_of`` are ignored.
    card_txns : pl.DataFrame
        Transactions of the reported cards: ``txn_id``, ``terminal_id``,
        ``card_token``, ``txn_time`` (other cards' rows are ignored).
    terminal_cards : pl.DataFrame
        ``terminal_id``, ``n_cards``: distinct cards per terminal over
        :meth:`CompromiseParams.window`.
    n_active_cards : int
        Distinct cards over the same window, all terminals.
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
    known = known_reports(reports, as_of)
    visits = exposure_visits(known, card_txns, as_of, params)
    n_fraud_cards = visits.get_column("card_token").n_unique()
    if n_active_cards <= 0 or n_fraud_cards == 0 or terminal_cards.height == 0:
        return _empty_result()
    start, _ = params.window(as_of)
    # every terminal each F-card used in the analysis window (n_t counts them too)
    presence = (
        card_txns.filter(pl.col("txn_time").dt.date().is_between(start, as_of))
        .join(visits.select("card_token").unique(), on="card_token", how="semi")
        .select("terminal_id", "card_token")
        .unique()
    )
    n_frame = terminal_cards.select("terminal_id", pl.col("n_cards").cast(pl.Int64).alias("n"))
    m = n_frame.height
    stats = _explain_away(visits, presence, n_frame, n_active_cards, params)
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
                "{} of {} cards seen here ({}%) were later reported as fraud elsewhere, "
                "seen 1-{} days before their first fraud (minimum {} cards)",
                pl.col("k"),
                pl.col("n"),
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
                "{}x the base rate: {}% of all active cards were later reported (minimum {}x)",
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
                "binomial tail p = {}, Benjamini-Hochberg q = {} across {} terminals "
                "(maximum q {})",
                sci(pl.col("p_value")),
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
