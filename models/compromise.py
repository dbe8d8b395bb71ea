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
        "period_start": pl.Date(),
        "period_end": pl.Date(),
        "n_windows": pl.Int64(),
        "k": pl.Int64(),
        "n": pl.Int64(),
        "base_rate": pl.Float64(),
        "lift": pl.Float64(),
        "p_value": pl.Float64(),
        "q_value": pl.Float64(),
        "flagged": pl.Boolean(),
    }
)
#: Distinct cards per terminal and day by the day of their previous visit there
#: (``card_visit_days``); ``terminal_id = NETWORK`` counts visits at any terminal.
NETWORK = "*"
VISIT_DAYS_SCHEMA = pl.Schema(
    {
        "terminal_id": pl.String(),
        "local_date": pl.Date(),
        "prev_date": pl.Date(),
        "n_cards": pl.Int64(),
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


def log_binomial_tail(k: np.ndarray, n: np.ndarray, p: float | np.ndarray) -> np.ndarray:
    """Natural log of :func:`binomial_tail`, finite where the tail underflows to 0.

    Strong CPPs have tails far below 1e-300: ``binom.sf`` returns 0 for all of them,
    so ordering windows or terminals by it is a tie. Where the tail is too small for
    floating point, ``P(X >= k)`` lies between ``pmf(k)`` and ``pmf(k) / (1 - r)``
    with ``r = (n - k) p / ((k + 1) (1 - p))`` (the terms after ``k`` shrink at least
    geometrically by ``r < 1``); the upper bound is returned there.

    Examples
    --------
    >>> round(float(log_binomial_tail(np.array([1]), np.array([2]), 0.5)[0]), 3)
    -0.288
    >>> bool(log_binomial_tail(np.array([900]), np.array([1000]), 0.01)[0] < -3000)
    True
    """
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    p = np.broadcast_to(np.asarray(p, dtype=np.float64), np.broadcast(k, n).shape)
    tail = binomial_tail(k, n, p)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (n - k) * p / ((k + 1) * np.maximum(1 - p, 1e-300))
        bound = binom.logpmf(k, n, p) - np.log1p(-np.minimum(r, 1 - 1e-12))
        return np.where(tail > 1e-250, np.log(np.maximum(tail, 1e-300)), bound)


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


def _day_arrays(rows: pl.DataFrame, start: date) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Day index, previous-day index (-1: none or before ``start``) and counts of ``rows``."""
    day = (rows.get_column("local_date") - start).dt.total_days().to_numpy()
    prev = (rows.get_column("prev_date") - start).dt.total_days().fill_null(-1).to_numpy()
    return day, np.maximum(prev, -1), rows.get_column("n_cards").to_numpy()


def _span_counts(rows: pl.DataFrame, start: date, n_days: int) -> np.ndarray:
    """``N[a, b]``: distinct cards over days ``a..b`` (indices from ``start``) of ``rows``.

    ``rows`` are ``local_date``, ``prev_date``, ``n_cards`` of one terminal (or of the
    network): a card counts once in ``[a, b]``, on its first day there, the one whose
    previous visit is before ``a`` (or unknown).
    """
    return _span_matrix(*_day_arrays(rows, start), n_days)


def _span_matrix(day: np.ndarray, prev: np.ndarray, n: np.ndarray, n_days: int) -> np.ndarray:
    """:func:`_span_counts` from day-index arrays."""
    keep = (day >= 0) & (day < n_days)
    by_prev = np.zeros((n_days, n_days + 1))
    # column j = prev + 1: a day before the window (or no previous visit) is column 0
    np.add.at(by_prev, (day[keep], prev[keep] + 1), n[keep])
    first_in = np.cumsum(by_prev, axis=1)[:, :n_days]  # [d, a]: previous visit before a
    upto = np.cumsum(first_in, axis=0)  # [b, a]: sum over d <= b
    # below[a] = sum over d < a of first_in[d, a] = upto[a - 1, a]
    below = np.concatenate([[0.0], upto[np.arange(n_days - 1), np.arange(1, n_days)]])
    spans = (upto - below[None, :]).T  # [a, b]
    return np.where(np.arange(n_days)[None, :] >= np.arange(n_days)[:, None], spans, 0.0)


def _visit_rows(visits: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    """Day rows (``_with_prev_date``) of the distinct cards in ``visits`` per ``keys``."""
    return _with_prev_date(
        visits.select(*keys, "card_token", pl.col("txn_time").dt.date().alias("local_date")),
        keys,
    )


def _scan_periods(
    visits: pl.DataFrame, visit_days: pl.DataFrame, start: date, n_days: int, min_cards: int
) -> pl.DataFrame:
    """Each terminal's compromise period: the window that is the least likely under
    the network's rate over the same days.

    Windows start on an F-card visit day of the terminal and last 1, 2, 4, ... days
    (:func:`_scan_windows`); in each, ``k`` = F-cards seen there, ``n`` = all cards
    seen there, ``p`` = network F-cards with an exposure visit in the window / network
    cards active in it (domain.md §2.1: the fraction on the dates ``D`` the F-cards
    visited). Only terminals with at least ``min_cards`` F-cards can be CPPs and are
    scanned. Returns ``terminal_id``, ``n`` (cards seen in the period), ``period_start``,
    ``period_end`` and ``n_windows``, the windows the scan could have tried for any
    placement of the F-cards (Bonferroni multiplicity).
    """
    empty = pl.DataFrame(
        schema={
            "terminal_id": pl.String(),
            "n": pl.Int64(),
            "period_start": pl.Date(),
            "period_end": pl.Date(),
            "n_windows": pl.Int64(),
        }
    )
    fraud_rows = _visit_rows(visits, ["terminal_id"])
    scanned = (
        visits.group_by("terminal_id")
        .agg(pl.col("card_token").n_unique().alias("k"))
        .filter(pl.col("k") >= min_cards)
        .get_column("terminal_id")
    )
    if scanned.len() == 0:
        return empty
    fraud_net = _span_counts(_visit_rows(visits, []), start, n_days)
    active_net = _span_counts(visit_days.filter(pl.col("terminal_id") == NETWORK), start, n_days)
    p_net = np.clip(fraud_net / np.maximum(active_net, 1.0), 1e-12, 1.0)
    groups = {}
    for name, frame in (("k", fraud_rows), ("n", visit_days)):
        part = frame.filter(pl.col("terminal_id").is_in(scanned.implode())).sort("terminal_id")
        ids = part.get_column("terminal_id").to_numpy()
        arrays = _day_arrays(part, start)
        cuts = np.flatnonzero(ids[1:] != ids[:-1]) + 1
        bounds = zip(np.r_[0, cuts], np.r_[cuts, ids.size], strict=True)
        groups[name] = {ids[i]: tuple(x[i:j] for x in arrays) for i, j in bounds if j > i}
    out: list[tuple[str, int, int, int, int]] = []
    for terminal in scanned.sort().to_list():
        k_arrays = groups["k"][terminal]
        k_span = _span_matrix(*k_arrays, n_days)
        n_span = _span_matrix(*groups["n"].get(terminal, k_arrays), n_days)
        days = np.unique(k_arrays[0])
        days = days[(days >= 0) & (days < n_days)]
        trading = np.unique(groups["n"].get(terminal, k_arrays)[0])
        a, b, n_windows = _scan_windows(days, trading, n_days)
        k = k_span[a, b]
        n = np.maximum(n_span[a, b], k)
        tail = log_binomial_tail(k, n, p_net[a, b])
        # most significant window (in log space: strong CPPs underflow ``sf``); ties go
        # to more F-cards, then the shorter span
        best = np.lexsort((b - a, -k, tail))[0]
        out.append((terminal, int(a[best]), int(b[best]), n_windows, int(n[best])))
    return pl.DataFrame(
        out, schema=["terminal_id", "a", "b", "n_windows", "n"], orient="row"
    ).select(
        "terminal_id",
        pl.col("n").cast(pl.Int64),
        (pl.lit(start) + pl.duration(days="a")).cast(pl.Date).alias("period_start"),
        (pl.lit(start) + pl.duration(days="b")).cast(pl.Date).alias("period_end"),
        pl.col("n_windows").cast(pl.Int64),
    )


def _scan_windows(
    days: np.ndarray, trading: np.ndarray, n_days: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Candidate windows ``[a, b]`` (day indices) of one terminal and their multiplicity.

    Windows start on a day an F-card visited and last 1, 2, 4, 8, ... days (clipped at
    the terminal's last trading day): a compromise period of any length ``P`` is inside a window of at most
    ``2 P`` days, and the windows that could be tried are the terminal's ``T`` trading
    days times the ``S`` lengths, instead of all ``T (T + 1) / 2`` windows: overlapping
    windows of nearly the same length test almost the same cards, and Bonferroni over
    all of them pays for that redundancy. ``n_windows = min(T S, T (T + 1) / 2)``.
    """
    t = max(int(trading.size), 1)
    first = int(trading.min()) if trading.size else 0
    last = int(trading.max()) if trading.size else n_days - 1
    lengths = 2 ** np.arange(int(np.ceil(np.log2(max(last - first + 1, 1)))) + 1)
    a = np.repeat(days, lengths.size)
    b = np.minimum(a + np.tile(lengths, days.size) - 1, max(last, int(days.max())))
    pairs = np.unique(np.stack([a, b], axis=1), axis=0)
    return pairs[:, 0], pairs[:, 1], min(t * lengths.size, max(t * (t + 1) // 2, 1))


def _period_index(frame: pl.DataFrame, start: date, n_days: int) -> tuple[np.ndarray, np.ndarray]:
    """Day indices (from ``start``) of ``frame``'s ``period_start`` and ``period_end``.

    Days before ``start`` (no data there) count as ``start``.
    """
    a = (frame.get_column("period_start") - start).dt.total_days().to_numpy()
    b = (frame.get_column("period_end") - start).dt.total_days().to_numpy()
    return np.clip(a, 0, n_days - 1), np.clip(b, 0, n_days - 1)


def _terminal_tests(
    visits: pl.DataFrame,
    frame: pl.DataFrame,
    removed: pl.DataFrame,
    explained_days: pl.DataFrame,
    active_net: np.ndarray,
    start: date,
) -> pl.DataFrame:
    """k_t, n_t, base rate, lift and (scan-adjusted) binomial tail per terminal.

    Everything is counted over the terminal's compromise period: ``k`` = F-cards not yet
    explained seen at ``t`` then, ``n`` = cards seen at ``t`` then less the explained
    ones, ``p`` = F-cards not yet explained with an exposure visit anywhere then / cards
    active anywhere then less the explained ones. The tail is multiplied by the number
    of windows the period was chosen from (Bonferroni over the scan).
    """
    n_days = active_net.shape[0]
    inside = visits.join(
        frame.select("terminal_id", "period_start", "period_end"), on="terminal_id"
    ).filter(pl.col("txn_time").dt.date().is_between(pl.col("period_start"), pl.col("period_end")))
    per_terminal = inside.group_by("terminal_id").agg(
        pl.col("card_token").n_unique().cast(pl.Int64).alias("k"),
        pl.col("txn_id").sort_by("txn_time").head(MAX_EVIDENCE).alias("evidence"),
    )
    gone = (
        removed.join(frame.select("terminal_id", "period_start", "period_end"), on="terminal_id")
        .filter(pl.col("local_date").is_between(pl.col("period_start"), pl.col("period_end")))
        .group_by("terminal_id")
        .agg(pl.col("card_token").n_unique().cast(pl.Int64).alias("gone"))
    )
    a, b = _period_index(frame, start, n_days)
    fraud_left = _span_counts(_visit_rows(visits, []), start, n_days)[a, b]
    explained = _span_counts(_with_prev_date(explained_days, []), start, n_days)[a, b]
    active = np.maximum(active_net[a, b] - explained, 0.0)
    base = np.where(active > 0, np.minimum(fraud_left / np.maximum(active, 1.0), 1.0), 1.0)
    stats = (
        frame.with_columns(pl.Series("base_rate", base, dtype=pl.Float64))
        .join(per_terminal, on="terminal_id", how="left")
        .join(gone, on="terminal_id", how="left")
        .with_columns(pl.col("k", "gone").fill_null(0))
        # a card seen in its window is also counted in n_t; guard against inconsistent inputs
        .with_columns(pl.max_horizontal(pl.col("n") - pl.col("gone"), "k").alias("n"))
        .drop("gone")
        .sort("terminal_id")
    )
    log_p = np.minimum(
        log_binomial_tail(
            stats["k"].to_numpy(), stats["n"].to_numpy(), stats["base_rate"].to_numpy()
        )
        + np.log(stats["n_windows"].to_numpy()),
        0.0,
    )
    return stats.with_columns(
        (pl.col("k") / (pl.col("n") * pl.col("base_rate"))).fill_nan(0.0).alias("lift"),
        pl.Series("p_value", np.exp(log_p)),
        # ``log_p`` orders the candidates where ``p_value`` underflows to 0
        pl.Series("log_p", log_p),
    )


def _explain_away(
    visits: pl.DataFrame,
    presence: pl.DataFrame,
    frame: pl.DataFrame,
    active_net: np.ndarray,
    start: date,
    params: CompromiseParams,
) -> pl.DataFrame:
    """Select CPPs one at a time; each one's F-cards are explained and leave the data.

    A compromised card also shops at its owner's other usual terminals, so those
    terminals share many F-cards with the real point of compromise and look like
    CPPs too. The terminal that explains the most (smallest tail probability, compared
    in log space so that strong CPPs whose tails underflow are still ordered) is
    taken first; its F-cards are then removed (from ``k``, ``n`` and the base rate)
    before the next terminal is judged, so a terminal is only a CPP on the cards the
    earlier ones do not explain. Candidates must pass the Benjamini-Hochberg bound
    for their rank (``p <= q r / m``), ``k >= min_cards`` and ``lift >= min_lift``.
    """
    m = frame.height
    explained = pl.Series("card_token", [], dtype=pl.String)
    selected: list[pl.DataFrame] = []
    while True:
        left_visits = visits.filter(~pl.col("card_token").is_in(explained.implode()))
        removed = presence.filter(pl.col("card_token").is_in(explained.implode()))
        explained_days = removed.select("card_token", "local_date")
        stats = _terminal_tests(left_visits, frame, removed, explained_days, active_net, start)
        if left_visits.height == 0:
            break
        done = [s.item(0, "terminal_id") for s in selected]
        rank = len(selected) + 1
        candidates = stats.filter(
            ~pl.col("terminal_id").is_in(done)
            & (pl.col("k") >= params.min_cards)
            & (pl.col("lift") >= params.min_lift)
            & (pl.col("log_p") <= np.log(params.fdr_q * rank / m))
        )
        if candidates.height == 0:
            break
        best = candidates.sort(["log_p", "terminal_id"]).head(1)
        selected.append(best.with_columns(pl.lit(True).alias("selected")))
        cards = _period_cards(left_visits, best)
        explained = pl.concat([explained, cards])
    done = [s.item(0, "terminal_id") for s in selected]
    rest = stats.filter(~pl.col("terminal_id").is_in(done)).with_columns(
        pl.lit(False).alias("selected")
    )
    return pl.concat([*selected, rest], how="vertical").sort("terminal_id")


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
