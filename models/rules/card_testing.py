"""Card testing / BIN attacks: many distinct cards in an hour with a high decline rate and small amounts, and runs of sequential or incrementing card numbers (same BIN, last 4 stepping).

Thresholds: ``[card_testing]`` in ``models/thresholds.toml`` (>= 10 distinct cards in 3,600 s, decline rate > 30%, median amount < 10 yuan; runs of >= 5 cards). Domain: ``shared/reference/domain.md`` section 1 row 7 (BIN-wide decline monitoring [S13]; attackers need a 1-2% hit rate [S14]; counts are heuristics [H]).
"""

from __future__ import annotations

from typing import Any

import polars as pl

from models.rules.common import Check, _f, _pct, _yuan, exceed_score


def card_testing_checks(cfg: dict[str, Any]) -> list[Check]:
    """Many cards, small amounts, high decline rate, sequential card numbers (domain §1 #7)."""
    c = cfg["card_testing"]
    return [
        Check(
            "card_burst",
            pl.col("testing_cards").is_not_null(),
            exceed_score(pl.col("testing_cards"), _f(c["min_distinct_cards"])),
            pl.format(
                "{} distinct cards within {} min, {}% declined, median amount {} yuan "
                "(thresholds: >= {} cards, > {}% declined, < {} yuan)",
                pl.col("testing_cards"),
                pl.lit(int(c["window_s"]) // 60),
                _pct(pl.col("testing_decline_rate")),
                _yuan(pl.col("testing_median_amount")),
                pl.lit(int(c["min_distinct_cards"])),
                _pct(_f(c["decline_rate"])),
                _yuan(_f(c["max_median_amount_minor"])),
            ),
            pl.col("testing_cards").cast(pl.Float64),
            _f(c["min_distinct_cards"]),
        ),
        Check(
            "sequential_cards",
            pl.col("n_sequential_cards") >= int(c["min_sequential_cards"]),
            exceed_score(pl.col("n_sequential_cards"), _f(c["min_sequential_cards"])),
            pl.format(
                "{} cards of one BIN in sequence within {} min: last-4 digits in a fixed step "
                "(<= {}) or rising by 1 to {} in order of use, >= {} in a run",
                pl.col("n_sequential_cards"),
                pl.lit(int(c["window_s"]) // 60),
                pl.lit(int(c["max_last4_gap"])),
                pl.lit(int(c["max_last4_step"])),
                pl.lit(int(c["min_incrementing_run"])),
            ),
            pl.col("n_sequential_cards").cast(pl.Float64),
            _f(c["min_sequential_cards"]),
        ),
    ]
