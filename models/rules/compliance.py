"""Non-compliant use of the trial: use outside the registration or activation window, trial caps and limits, disallowed card types, transaction types, entry modes and hours.

Thresholds come from the trial policy (caps, allowed codes, hours) rather than constants. Domain: ``shared/reference/domain.md`` sections 1 rows 9, 11, 12 and 3 (fast-onboarding limits: per-transaction and per-day caps, debit only [S39]; host receive time for lifecycle rules; night window [S9][S10]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, _hhmm, _yuan, count_score, exceed_score

_UNREGISTERED_TEXT = {
    "unknown_terminal": "terminal id is not in the registry",
    "before_registration": "used before its first registry entry",
    "suspended": "used while suspended",
    "terminated": "used after termination",
    "before_activation": "used before activation",
    "before_trial": "used before the trial start",
    "after_trial": "used after the trial end",
    "implausible_time": "transactions dated outside the trial window (clock skew)",
}


def unregistered_use_checks(cfg: dict[str, Any]) -> list[Check]:
    """Unknown terminal id or use outside the activation / trial window (domain §1 #11)."""
    c = cfg["unregistered_use"]
    text = pl.col("unregistered_reason").replace_strict(
        _UNREGISTERED_TEXT, default=pl.col("unregistered_reason")
    )
    return [
        Check(
            "unregistered",
            pl.col("n_unregistered") >= int(c["min_txns"]),
            count_score(pl.col("n_unregistered")),
            pl.format("{}: {} transactions", text, pl.col("n_unregistered")),
            pl.col("n_unregistered").cast(pl.Float64),
            _f(c["min_txns"]),
        )
    ]


def trial_limit_breach_checks(cfg: dict[str, Any]) -> list[Check]:
    """Amount or count caps of the trial policy exceeded (contract policies)."""
    m = int(cfg["trial_limit_breach"]["min_breaches"])
    return [
        Check(
            "txn_cap",
            pl.col("n_over_txn_cap") >= m,
            exceed_score(pl.col("max_over_cap_amount"), pl.col("max_txn_amount_minor")),
            pl.format(
                "{} transactions over the per-transaction cap; largest {} yuan (cap {} yuan)",
                pl.col("n_over_txn_cap"),
                _yuan(pl.col("max_over_cap_amount")),
                _yuan(pl.col("max_txn_amount_minor")),
            ),
            pl.col("max_over_cap_amount").cast(pl.Float64),
            pl.col("max_txn_amount_minor").cast(pl.Float64),
        ),
        Check(
            "daily_amount_cap",
            pl.col("n_over_daily_amount") >= m,
            exceed_score(pl.col("cap_amount"), pl.col("max_daily_amount_minor")),
            pl.format(
                "daily approved amount {} yuan (cap {} yuan)",
                _yuan(pl.col("cap_amount")),
                _yuan(pl.col("max_daily_amount_minor")),
            ),
            pl.col("cap_amount").cast(pl.Float64),
            pl.col("max_daily_amount_minor").cast(pl.Float64),
        ),
        Check(
            "daily_count_cap",
            pl.col("n_over_daily_count") >= m,
            exceed_score(pl.col("n_cap"), pl.col("max_daily_txn_count")),
            pl.format(
                "{} approved transactions in the day (cap {})",
                pl.col("n_cap"),
                pl.col("max_daily_txn_count"),
            ),
            pl.col("n_cap").cast(pl.Float64),
            pl.col("max_daily_txn_count").cast(pl.Float64),
        ),
        Check(
            "same_card_cap",
            pl.col("n_over_same_card") >= m,
            exceed_score(pl.col("max_same_card"), pl.col("max_same_card_per_day")),
            pl.format(
                "one card used {} times in the day (cap {})",
                pl.col("max_same_card"),
                pl.col("max_same_card_per_day"),
            ),
            pl.col("max_same_card").cast(pl.Float64),
            pl.col("max_same_card_per_day").cast(pl.Float64),
        ),
    ]


def disallowed_use_checks(cfg: dict[str, Any]) -> list[Check]:
    """Card type, transaction type, entry mode or hours the policy forbids (contract)."""
    c = cfg["disallowed_use"]
    m = int(c["min_txns"])
    entry = pl.col("n_disallowed_entry_mode_effective")
    return [
        Check(
            "card_type",
            pl.col("n_disallowed_card_type") >= m,
            count_score(pl.col("n_disallowed_card_type")),
            pl.format(
                "{} transactions with card type {}, which the policy does not allow",
                pl.col("n_disallowed_card_type"),
                pl.col("disallowed_card_type_value"),
            ),
            pl.col("n_disallowed_card_type").cast(pl.Float64),
            _f(m),
        ),
        Check(
            "txn_type",
            pl.col("n_disallowed_txn_type") >= m,
            count_score(pl.col("n_disallowed_txn_type")),
            pl.format(
                "{} transactions of type {}, which the policy does not allow",
                pl.col("n_disallowed_txn_type"),
                pl.col("disallowed_txn_type_value"),
            ),
            pl.col("n_disallowed_txn_type").cast(pl.Float64),
            _f(m),
        ),
        Check(
            "entry_mode",
            entry >= m,
            count_score(entry),
            pl.format(
                "{} transactions with entry mode {}, which the policy does not allow",
                entry,
                pl.col("disallowed_entry_mode_value"),
            ),
            entry.cast(pl.Float64),
            _f(m),
        ),
        Check(
            "hours",
            pl.col("n_outside_hours") >= int(c["min_outside_hours"]),
            count_score(pl.col("n_outside_hours") - int(c["min_outside_hours"]) + 1),
            pl.format(
                "{} transactions outside business hours {}-{}",
                pl.col("n_outside_hours"),
                _hhmm(pl.col("hours_start_min")),
                _hhmm(pl.col("hours_end_min")),
            ),
            pl.col("n_outside_hours").cast(pl.Float64),
            _f(c["min_outside_hours"]),
        ),
    ]
