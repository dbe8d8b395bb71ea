"""What every rule family shares: the :class:`Check` record, score shapes (exceed, below, count, Poisson surprise) and text helpers for reasons.

Sign convention (shared with the anomaly model): higher score = more certain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from features.daily import EVIDENCE_BEHAVIOURS

#: The per-terminal behaviours the rules judge: the ones whose evidence is
#: per-transaction flags computed in ``features.daily``.
RULE_BEHAVIOURS: tuple[str, ...] = EVIDENCE_BEHAVIOURS


@dataclass(frozen=True)
class Check:
    """One condition of a behaviour, with its reason.

    ``when`` is a boolean expression over terminal-day columns; ``score`` in
    [0, 1] is its contribution when it holds; ``fires`` False marks a
    supporting check that adds a reason but cannot raise the behaviour alone.
    """

    code: str
    when: pl.Expr
    score: pl.Expr
    text: pl.Expr
    observed: pl.Expr
    threshold: pl.Expr
    fires: bool = True


def exceed_score(observed: pl.Expr, threshold: pl.Expr | float) -> pl.Expr:
    """0.5 at the threshold, rising towards 1 as ``observed`` grows: ``1 - 0.5 * t / o``."""
    t = threshold if isinstance(threshold, pl.Expr) else pl.lit(float(threshold))
    o = observed.cast(pl.Float64)
    return (1.0 - 0.5 * t / o.clip(lower_bound=1e-12)).clip(0.0, 1.0)


def below_score(observed: pl.Expr, threshold: pl.Expr | float) -> pl.Expr:
    """0.5 at the threshold, rising towards 1 as ``observed`` falls below it."""
    t = threshold if isinstance(threshold, pl.Expr) else pl.lit(float(threshold))
    return (1.0 - 0.5 * observed.cast(pl.Float64) / t.clip(lower_bound=1e-12)).clip(0.0, 1.0)


def count_score(n: pl.Expr) -> pl.Expr:
    """A hard rule: 0.5 for one occurrence, ``1 - 0.5**n`` for ``n`` (0.75, 0.875, ...)."""
    return 1.0 - pl.lit(0.5).pow(n.cast(pl.Float64).clip(lower_bound=0.0))


def _ln_factorial(k: pl.Expr) -> pl.Expr:
    """``ln k!`` (Stirling series; error below 1e-3 at k = 1, exact 0 at k = 0)."""
    kf = k.cast(pl.Float64).clip(lower_bound=1.0)
    series = (
        kf * kf.log()
        - kf
        + 0.5 * (2.0 * math.pi * kf).log()
        + 1.0 / (12.0 * kf)
        - 1.0 / (360.0 * kf.pow(3))
    )
    return pl.when(k < 1).then(0.0).otherwise(series)


def poisson_surprise(k: pl.Expr, expected: pl.Expr) -> pl.Expr:
    """``-log10 P(X >= k)`` for ``X ~ Poisson(expected)``, 0 when ``k <= expected``.

    Uses ``P(X >= k) <= P(X = k) * (k + 1) / (k + 1 - expected)`` (the tail's
    terms shrink at least geometrically), an upper bound on the probability that
    is tight when ``k`` is well above ``expected``: the surprise is never overstated.
    """
    kf = k.cast(pl.Float64)
    lam = expected.cast(pl.Float64).clip(lower_bound=1e-12)
    log_p = -lam + kf * lam.log() - _ln_factorial(k) + ((kf + 1.0) / (kf + 1.0 - lam)).log()
    return pl.when(kf > lam).then((-log_p / math.log(10.0)).clip(lower_bound=0.0)).otherwise(0.0)


def _pct(e: pl.Expr) -> pl.Expr:
    return (e * 100.0).round(1)


def _yuan(e: pl.Expr) -> pl.Expr:
    return (e.cast(pl.Float64) / 100.0).round(2)


def _f(v: Any) -> pl.Expr:
    return pl.lit(float(v), dtype=pl.Float64)


def _hhmm(minutes: pl.Expr) -> pl.Expr:
    h = (minutes // 60).cast(pl.String).str.pad_start(2, "0")
    m = (minutes % 60).cast(pl.String).str.pad_start(2, "0")
    return pl.format("{}:{}", h, m)


def _night_business() -> pl.Expr:
    """The policy's business hours include 02:00 (a night business: night use is normal)."""
    s, e, m = pl.col("hours_start_min"), pl.col("hours_end_min"), pl.lit(120)
    inside = pl.when(s < e).then((m >= s) & (m < e)).otherwise((m >= s) | (m < e))
    return (s.is_not_null() & e.is_not_null() & inside).fill_null(False)
