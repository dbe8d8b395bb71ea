"""Parameters, schemas and the result record of the common-point-of-compromise detector (``[card_compromise]`` in ``models/thresholds.toml``)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, timedelta
from typing import Any, NamedTuple

import polars as pl

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
